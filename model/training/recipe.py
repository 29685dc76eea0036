"""What the training recipes share: the per-frame prefix loss, the step-based schedule, uint8 clips to input.

:mod:`.train` (the motion data set) and :mod:`.finetune` (a folder of videos) both train stream
models on the outputs of every prefix of a clip, the way the windowed service reads them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_video(clips: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, T, H, W]`` in [0, 1]."""
    return clips.to(device).permute(0, 4, 1, 2, 3).float().div_(255.0)


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.1, floor: float = 0.02):
    """LR factor per step: linear warm-up, then cosine decay. A function of the step alone, so a
    resumed run with more epochs simply continues on the longer schedule."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return max(floor, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def prefix_loss(logits: torch.Tensor, labels: torch.Tensor, min_frames: int, smoothing: float) -> torch.Tensor:
    """Cross-entropy of the per-frame outputs ``[B, T, K]`` of every prefix of >= ``min_frames`` frames."""
    useful = logits[:, min_frames - 1 :]
    repeated = labels[:, None].expand(-1, useful.shape[1])
    return F.cross_entropy(useful.reshape(-1, useful.shape[-1]), repeated.reshape(-1), label_smoothing=smoothing)
