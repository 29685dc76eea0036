"""Temporal ensembles (the paper's third technique) and "A6" = A4 + A5.

An :class:`Ensemble` averages the logits of several stream or base models. Each member has its own
input size, frame stride and frame offset, and its own state: the ensemble's state is one flat dict
whose keys are the members' keys prefixed ``m{i}/``, so it stacks, splits and serialises like a
single model's state. The paper's temporal ensemble is two models at half the frame rate, one fed
the even frames and one the odd frames (``strides=(2, 2), offsets=(0, 1)``); A6 is A4 and A5 on the
same video, each at its own resolution. Logits are averaged before the softmax (arithmetic mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .movinet import MoViNet, State


class Ensemble(nn.Module):
    def __init__(
        self,
        members: list[MoViNet],
        strides: tuple[int, ...] | None = None,
        offsets: tuple[int, ...] | None = None,
        sizes: tuple[int | None, ...] | None = None,
    ) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        classes = {m.num_classes for m in members}
        if len(classes) != 1:
            raise ValueError(f"members disagree on the number of classes: {sorted(classes)}")
        if len({m.causal for m in members}) != 1:
            raise ValueError("members must all be stream models or all base models")
        self.members = nn.ModuleList(members)
        self.strides = tuple(strides or (1,) * len(members))
        self.offsets = tuple(offsets or (0,) * len(members))
        self.sizes = tuple(sizes or (None,) * len(members))
        for name, values in (("strides", self.strides), ("offsets", self.offsets), ("sizes", self.sizes)):
            if len(values) != len(members):
                raise ValueError(f"{name} has {len(values)} entries for {len(members)} members")
        if any(o >= s or o < 0 for o, s in zip(self.offsets, self.strides)):
            raise ValueError("each offset must be in [0, stride)")
        self.causal = members[0].causal
        self.num_classes = members[0].num_classes
        self.labels = members[0].labels

    def _member_input(self, index: int, video: Tensor, start: int) -> Tensor | None:
        """The frames of ``video`` (whose first frame has global index ``start``) that member ``index`` sees."""
        stride, offset, size = self.strides[index], self.offsets[index], self.sizes[index]
        first = (offset - start) % stride
        frames = video[:, :, first::stride]
        if frames.shape[2] == 0:
            return None
        if size is not None and tuple(frames.shape[-2:]) != (size, size):
            b, c, t, h, w = frames.shape
            flat = frames.transpose(1, 2).reshape(b * t, c, h, w)
            flat = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
            frames = flat.reshape(b, t, c, size, size).transpose(1, 2)
        return frames

    def forward(self, video: Tensor, state: State | None = None, frame_index: int = 0) -> tuple[Tensor, State]:
        """Mean logits of the members. For strided members, ``frame_index`` is the global index of
        ``video``'s first frame (streams keep it in the state as ``frame_index``)."""
        state = state or {}
        start = int(state["frame_index"][0]) if "frame_index" in state else frame_index
        logits, new_state = [], {}
        for index, member in enumerate(self.members):
            prefix = f"m{index}/"
            member_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)} or None
            frames = self._member_input(index, video, start)
            if frames is None:  # this call has no frame for this member: keep its state and last logits
                if member_state is None or f"logits/m{index}" not in state:
                    continue
                out = state[f"logits/m{index}"]
            else:
                out, member_state = member(frames, member_state)
            if self.causal:
                new_state.update({prefix + k: v for k, v in member_state.items()})
                new_state[f"logits/m{index}"] = out
            logits.append(out)
        if not logits:
            raise ValueError("no member saw a frame; feed more frames")
        if self.causal:
            batch = video.shape[0]
            new_state["frame_index"] = torch.full((batch,), start + video.shape[2], dtype=torch.int64)
        return torch.stack(logits).mean(dim=0), new_state


def movinet_a6(weights: str | None = None, num_classes: int = 600, mode: str = "stream") -> Ensemble:
    """A6 = A4 (290 px) + A5 (320 px) on the same video, logits averaged (README of the official code)."""
    from . import create_model

    a4 = create_model(f"movinet_a4_{mode}", weights=weights, num_classes=num_classes)
    a5 = create_model(f"movinet_a5_{mode}", weights=weights, num_classes=num_classes)
    return Ensemble([a4, a5], sizes=(a4.info.input_size, a5.info.input_size))
