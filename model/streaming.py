"""Endless streams: keep what a stream model saw to a window, for many sessions in one forward.

The official stream model pools over *every* frame since the start of the stream, which fits
10-second clips; on a live feed the label would freeze after a few minutes. A
:class:`WindowedStream` runs two staggered states per session ("rows"):

* row 0 starts at frame 0, row 1 at frame ``window // 2``;
* a row that has seen ``window`` frames is reset to a fresh state before its next frame;
* the answer is read from the *older* row, which has seen between ``window / 2`` and ``window``
  frames (fewer only during the first half window of a session).

So a label depends on at most the last ``window`` frames, and follows a change of action within
about ``window / 2`` to ``window`` frames, at twice the compute of a plain stream. Many sessions
(:class:`Slot`) share one forward: :meth:`WindowedStream.step` stacks every active row of every
slot into one batch.

A :class:`TumblingStream` runs one row per session, at half that compute: the row is reset every
``window`` frames, and while it has seen fewer than half a window (after the session's first
window) the answer is the last one of the window before, held. A label then depends on at
most ``window`` frames too, but follows a change of action up to half a window later
(``benchmarks/window_policies.py`` measures both on the evaluation's continuous video).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .movinet import MoViNet, State
from .state import split_states, stack_states, state_and_metadata_from_bytes, state_to_bytes


@dataclass
class Slot:
    """One session's windowed stream: up to two row states and their frame counts."""

    window: int
    frames_seen: int = 0
    states: list[State | None] = field(default_factory=lambda: [None, None])
    counts: list[int] = field(default_factory=lambda: [0, 0])
    held: Tensor | None = None  # a tumbling stream's answer of its last whole window (``[classes]``)

    def active_rows(self) -> list[int]:
        """Rows that take the next frame (row 1 joins after half a window)."""
        return [0] if self.frames_seen < self.window // 2 else [0, 1]

    def answer_row(self) -> int:
        rows = self.active_rows()
        return max(rows, key=lambda r: self.counts[r])

    def to_tensors(self) -> tuple[State, dict]:
        """The slot as flat tensors (``row{r}/<state name>``) and its counters: the one codec that
        :meth:`to_bytes` and the service's checkpoints use."""
        tensors: State = {}
        for row, state in enumerate(self.states):
            for key, value in (state or {}).items():
                tensors[f"row{row}/{key}"] = value
        meta = {"window": self.window, "frames_seen": self.frames_seen, "counts": list(self.counts),
                "rows": [state is not None for state in self.states]}
        if self.held is not None:
            tensors["held"] = self.held
            meta["held"] = True
        return tensors, meta

    @classmethod
    def from_tensors(cls, tensors: State, meta: dict | str) -> Slot:
        info = json.loads(meta) if isinstance(meta, str) else meta
        states: list[State | None] = []
        for row, present in enumerate(info["rows"]):
            prefix = f"row{row}/"
            states.append({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)} if present else None)
        held = tensors["held"] if info.get("held") else None
        return cls(window=info["window"], frames_seen=info["frames_seen"], states=states, counts=list(info["counts"]),
                   held=held)

    def to_bytes(self, half: bool = False) -> bytes:
        """Serialise the slot (states + counters) with the versioned state format."""
        tensors, meta = self.to_tensors()
        return state_to_bytes(tensors, half=half, metadata={"slot": json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Slot:
        tensors, extra = state_and_metadata_from_bytes(data)
        return cls.from_tensors(tensors, extra["slot"])


class WindowedStream:
    """Step many windowed sessions through one stream model, one frame each per call."""

    def __init__(self, net: MoViNet, window: int | None = None, forward: Callable | None = None) -> None:
        """``forward``: what runs the one-frame calls instead of ``net`` (e.g. the trace from
        :func:`model.optimize.trace_frame_step`); same inputs and outputs."""
        if not net.causal:
            raise ValueError("WindowedStream needs a stream (causal) model")
        window = window or (net.info.clip_frames if net.info else 50)
        if window < 2:
            raise ValueError(f"window must be at least 2 frames, got {window}")
        self.net = net
        self.forward = forward or net
        self.window = window

    def new_slot(self) -> Slot:
        return Slot(window=self.window)

    def _checked(self, slots: list[Slot], frames: Tensor) -> Tensor:
        """``frames`` as ``[N, 3, 1, H, W]`` for the N ``slots``, all of this stream's window; else ValueError."""
        if len(slots) == 0:
            raise ValueError("step needs at least one slot")
        if frames.ndim == 4:
            frames = frames[:, :, None]
        if frames.ndim != 5 or frames.shape[0] != len(slots) or frames.shape[2] != 1:
            raise ValueError(f"frames must be [N, 3, 1, H, W] for N={len(slots)} slots, got {list(frames.shape)}")
        for slot in slots:
            if slot.window != self.window:
                raise ValueError(f"slot window {slot.window} != stream window {self.window}")
        return frames

    @torch.no_grad()
    def step(self, slots: list[Slot], frames: Tensor) -> Tensor:
        """Feed ``frames[i]`` (``[3, 1, H, W]``, or ``[3, H, W]``) to ``slots[i]``; return logits ``[N, classes]``.

        Slots are updated in place. All frames must share one size.
        """
        frames = self._checked(slots, frames)
        height, width = frames.shape[-2:]
        rows: list[tuple[int, int]] = []  # (slot index, row)
        states: list[State] = []
        for index, slot in enumerate(slots):
            for row in slot.active_rows():
                if slot.counts[row] >= self.window or slot.states[row] is None:
                    slot.states[row] = self.net.init_state(1, height, width)
                    slot.counts[row] = 0
                rows.append((index, row))
                states.append(slot.states[row])
        video = frames[[index for index, _ in rows]]  # (R, 3, 1, H, W)
        logits, new_state = self.forward(video, stack_states(states))
        for (index, row), state in zip(rows, split_states(new_state)):
            slots[index].states[row] = state
            slots[index].counts[row] += 1
        answers = []
        for index, slot in enumerate(slots):
            slot.frames_seen += 1
            best = max((i for i, (s, _) in enumerate(rows) if s == index), key=lambda i: slots[index].counts[rows[i][1]])
            answers.append(best)
        return logits[answers]


class TumblingStream(WindowedStream):
    """Step many tumbling-window sessions through one stream model: one row each, reset every
    ``window`` frames; while it has seen fewer than ``window // 2`` frames (after the session's
    first window) the answer is the row's last one of the window before (:attr:`Slot.held`)."""

    @torch.no_grad()
    def step(self, slots: list[Slot], frames: Tensor) -> Tensor:
        """Feed ``frames[i]`` (``[3, 1, H, W]`` or ``[3, H, W]``) to ``slots[i]``; the answers ``[N, classes]``."""
        frames = self._checked(slots, frames)
        height, width = frames.shape[-2:]
        for slot in slots:
            if slot.states[0] is None or slot.counts[0] >= self.window:
                slot.states[0] = self.net.init_state(1, height, width)
                slot.counts[0] = 0
        logits, new_state = self.forward(frames, stack_states([slot.states[0] for slot in slots]))
        answers = []
        for index, (slot, state) in enumerate(zip(slots, split_states(new_state), strict=True)):
            slot.states[0] = state
            slot.counts[0] += 1
            slot.frames_seen += 1
            young = slot.counts[0] < self.window // 2 and slot.frames_seen > slot.counts[0]
            answers.append(slot.held if young and slot.held is not None else logits[index])
            if slot.counts[0] == self.window:
                slot.held = logits[index].clone()
        return torch.stack(answers)
