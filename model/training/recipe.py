"""What the training recipes share: the per-frame prefix loss, the step-based schedule, uint8 clips
to input, the optimizer and its training step (:class:`Optimisation`), and the epoch's running figures.

:mod:`.train` (the motion data set) and :mod:`.finetune` (a folder of videos) both train stream
models on the outputs of every prefix of a clip, the way the windowed service reads them, with
the same optimizer, schedule, clipping and mixed precision; they differ in data and augmentation.
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


class Optimisation:
    """AdamW on the step-based :func:`warmup_cosine` schedule, one training step, and its resume.

    The step both recipes take: the per-frame forward under autocast (``amp``: bf16 on a CPU,
    fp16 with a grad scaler on CUDA), :func:`prefix_loss`, gradients clipped to norm 5, then the
    optimizer and the schedule. The checkpoint dicts stay the recipes' own; :meth:`resume` takes
    one back (the scaler's state only where it was saved and is in use).
    """

    def __init__(self, net: torch.nn.Module, lr: float, weight_decay: float, total_steps: int,
                 device: torch.device, amp: bool):
        self.net = net
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        self.schedule = warmup_cosine(total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
        self.device_type, self.amp = device.type, amp
        self.amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step(self, video: torch.Tensor, target: torch.Tensor, min_frames: int,
             smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on ``video [B, 3, T, H, W]``; returns the per-frame logits ``[B, T, K]`` and the loss."""
        with torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp):
            logits, _ = self.net(video, per_frame=True)  # (B, T, K)
            loss = prefix_loss(logits.float(), target, min_frames, smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), 5.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return logits, loss

    def resume(self, saved: dict) -> None:
        """Continue from a checkpoint dict holding ``optimizer``, ``step`` and possibly ``scaler``."""
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scaler.is_enabled() and "scaler" in saved:
            self.scaler.load_state_dict(saved["scaler"])
        # The schedule is a function of the step: continue it at the saved step (possibly on a
        # longer run) instead of restoring the old scheduler object.
        step = saved["step"]
        self.scheduler.last_epoch = step
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * self.schedule(step)

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


class EpochStats:
    """Running loss and last-frame accuracy over an epoch's steps, for the progress bar and the history."""

    def __init__(self):
        self.seen = self.correct = 0
        self.loss_sum = 0.0

    def add(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        self.seen += len(target)
        self.correct += (logits[:, -1].argmax(-1) == target).sum().item()
        self.loss_sum += loss.item() * len(target)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)
