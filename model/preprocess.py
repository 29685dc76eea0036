"""Frames in, model input out: the official eval preprocessing (resize short side, centre crop, /255)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def preprocess_frames(frames, size: int, short_side: int | None = None, antialias: bool = False) -> Tensor:
    """``uint8 [T, H, W, 3]`` RGB frames (numpy or tensor) -> float ``[3, T, size, size]`` in [0, 1].

    Resizes so the short side is ``short_side`` (default ``size``; the official eval uses the
    model's ``eval_min_size``), bilinear with half-pixel centres like ``tf.image.resize``, then
    crops the centre ``size`` x ``size``. ``antialias=True`` low-passes before a large downscale
    (camera frames to ~172 px); the official pipeline does not.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, Tensor):
        raise ValueError(f"frames must be a numpy array or tensor, got {type(frames).__name__}")
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] RGB, got {list(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    short_side = short_side or size
    if short_side < size:
        raise ValueError(f"short_side {short_side} is smaller than the crop {size}")
    video = frames.permute(3, 0, 1, 2).float()  # (3, T, H, W)
    height, width = video.shape[-2:]
    scale = short_side / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if (new_h, new_w) != (height, width):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=antialias)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    video = video[..., top : top + size, left : left + size]
    return (video / 255.0).clamp_(0.0, 1.0).contiguous()


class TimestampResampler:
    """Resample a stream of frames to a fixed frame rate by their timestamps, not their arrival.

    ``push(pts)`` says how many model frames the frame with presentation time ``pts`` (seconds)
    stands for: 0 (dropped: the model's grid has not advanced, or time went backwards), 1, or more
    (the source is slower than the model; the frame is repeated so that the model's sense of
    speed stays right). Grid point ``k`` is ``start + k / fps`` and takes the first frame at or
    after it, so no frame waits for its successor. A gap longer than ``max_gap`` seconds (a stalled
    camera) re-anchors the grid instead of repeating one frame for the whole gap.
    """

    def __init__(self, fps: float, max_gap: float = 1.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.max_gap = max_gap
        self.next_index = 0
        self.start: float | None = None
        self.last_pts: float | None = None

    def grid_time(self, index: int) -> float:
        return (self.start or 0.0) + index / self.fps

    def push(self, pts: float) -> int:
        if self.start is None:
            self.start, self.last_pts, self.next_index = pts, pts, 1
            return 1
        if pts < self.last_pts:
            return 0
        if pts - self.last_pts > self.max_gap:
            self.start, self.next_index = pts, 1
            self.last_pts = pts
            return 1
        self.last_pts = pts
        count = 0
        # a small tolerance so that a 25 fps source hits a 5 fps grid exactly despite rounding
        while self.grid_time(self.next_index) <= pts + 1e-6:
            self.next_index += 1
            count += 1
        return count


def prepare_frame(rgb, size: int, short_side: int | None = None) -> Tensor:
    """One decoded RGB frame (``uint8 [H, W, 3]``) -> the model's input frame ``[3, size, size]``.

    This is the one function the service and the evaluation share for camera frames: resize the
    short side (with antialiasing, since camera frames are much larger than the model's input),
    centre crop, scale to [0, 1].
    """
    return preprocess_frames(rgb, size, short_side=short_side, antialias=True)[:, 0]
