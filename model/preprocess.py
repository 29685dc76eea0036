"""Frames in, model input out: the official eval preprocessing (resize short side, centre crop, /255)."""

from __future__ import annotations

import math

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
    """Maps input timestamps onto the model's frame grid ``t0 + k / fps`` (by pts, not arrival).

    Slot ``k`` takes the first input frame whose pts is at or after ``t0 + k / fps`` (within 1 ms),
    so a 25 fps input gives frames 0, 5, 10, ... to a 5 fps model whatever the arrival times, a
    slower input repeats frames to keep the model's time axis, and a gap longer than ``max_gap_s``
    (a stalled camera) is skipped rather than filled. The service and the evaluation share it.
    """

    def __init__(self, fps: float, max_gap_s: float = 1.0) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.max_gap_frames = max(1, int(round(max_gap_s * fps)))
        self.t0: float | None = None
        self.next_k = 0
        self.last_pts: float | None = None

    def push(self, pts: float) -> list[int] | None:
        """Grid slots this frame fills (often ``[]``); ``None`` when pts went backwards."""
        if self.t0 is None:
            self.t0 = pts
        if self.last_pts is not None and pts < self.last_pts:
            return None
        self.last_pts = pts
        position = (pts - self.t0) * self.fps
        limit = math.floor(position + 1e-3 * self.fps)  # slots whose time is at or before pts
        if limit - self.next_k >= self.max_gap_frames:
            self.next_k = limit  # a gap: resume on the grid, do not invent frames
        slots = list(range(self.next_k, limit + 1))
        self.next_k = max(self.next_k, limit + 1)
        return slots


def prepare_frame(rgb, size: int, short_side: int | None = None) -> Tensor:
    """One decoded RGB frame (``uint8 [H, W, 3]``) -> the model's input frame ``[3, size, size]``.

    This is the one function the service and the evaluation share for camera frames: resize the
    short side (with antialiasing, since camera frames are much larger than the model's input),
    centre crop, scale to [0, 1].
    """
    return preprocess_frames(rgb, size, short_side=short_side, antialias=True)[:, 0]


def fit_frame(rgb: np.ndarray, size: int, short_side: int | None = None) -> np.ndarray:
    """One decoded RGB frame (``uint8 [H, W, 3]``) -> uint8 ``[size, size, 3]``: what the service
    keeps per model frame, and what the evaluation and the folder datasets feed the model.

    The geometry of :func:`prepare_frame` (short side to ``short_side``, default ``size``, centre
    crop), resized in uint8 by torch's antialiased bilinear kernel (the one torchvision uses for
    uint8 images): within one grey level of :func:`prepare_frame` in 8 bits, 3x cheaper than
    resizing in float (0.15 against 0.5 ms for 320x240 to 64 px on one core).
    """
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb must be a uint8 [H, W, 3] array, got {getattr(rgb, 'dtype', type(rgb).__name__)} "
                         f"{list(getattr(rgb, 'shape', []))}")
    short_side = short_side or size
    if short_side < size:
        raise ValueError(f"short_side {short_side} is smaller than the crop {size}")
    height, width = rgb.shape[:2]
    scale = short_side / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    if not rgb.flags.writeable:  # torch wants a writable buffer (it will not write this one)
        rgb = rgb.copy()
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]  # (1, 3, H, W), channels-last
    if (new_h, new_w) != (height, width):
        image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    crop = image[0, :, top : top + size, left : left + size].permute(1, 2, 0)
    return crop.numpy().copy() if crop.is_contiguous() else crop.contiguous().numpy()
