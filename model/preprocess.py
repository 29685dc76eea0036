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
