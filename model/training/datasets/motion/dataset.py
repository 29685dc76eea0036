"""The motion data set as a ``torch.utils.data.Dataset``: balanced labels, one seed per clip."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import CLASSES, NUM_CLASSES, MotionConfig
from .sequences import render_clip


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in a dataset seeded with ``seed`` (independent streams per clip)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


class MotionDataset(Dataset):
    """``num_clips`` rendered-on-the-fly clips with exactly balanced labels (when divisible by 10).

    Item ``i`` is ``(clip, label)``; the clip is a uint8 tensor ``[T, H, W, 3]``, or with
    ``as_float=True`` a float tensor ``[3, T, H, W]`` in ``[0, 1]`` (what the model consumes).
    """

    def __init__(
        self,
        config: MotionConfig = MotionConfig(),
        num_clips: int = 1000,
        seed: int = 0,
        as_float: bool = False,
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be positive, got {num_clips}")
        self.config = config
        self.num_clips = num_clips
        self.seed = seed
        self.as_float = as_float
        permutation = np.random.default_rng([int(seed), 0xBA1A_2CE]).permutation(num_clips)
        self.labels = permutation % NUM_CLASSES
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        label = int(self.labels[index])
        clip = torch.from_numpy(render_clip(label, clip_seed(self.seed, index), self.config))
        if self.as_float:
            clip = clip.permute(3, 0, 1, 2).float().div_(255.0)  # (3, T, H, W)
        return clip, label
