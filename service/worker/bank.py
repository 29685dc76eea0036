"""The stream states of one model group's sessions, stacked in batch tensors on the device.

A :class:`StateBank` keeps every state tensor of a model as one ``[capacity, ...]`` tensor, one
row per stream. A windowed session (:mod:`model.streaming`: two staggered streams, each reset
after ``window`` frames, the answer read from the older) owns two rows, a tumbling one (one
stream reset every ``window`` frames, the last answer of a window held while the next has seen
fewer than ``window // 2`` frames) and an unbounded one a single row; rows are allocated when a
worker adopts a session and freed when it lets go. A tick gathers the rows that take a frame
(``index_select``), runs one forward, and scatters the new states back (``index_copy_``): no
per-session stacking and splitting of state dicts.

The arithmetic is the one of :class:`model.streaming.WindowedStream` and
:class:`~model.streaming.TumblingStream` (equal outputs: tested),
and a bank row converts to and from a :class:`model.streaming.Slot` for checkpoints.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from model.streaming import Slot

Forward = Callable[[torch.Tensor, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class StreamRows:
    """One session's rows in a bank and where its windows stand."""

    __slots__ = ("rows", "frames_seen", "counts", "held")

    def __init__(self, rows: tuple[int, ...]) -> None:
        self.rows = rows
        self.frames_seen = 0
        self.counts = [0] * len(rows)  # frames each row has seen since its reset
        self.held: torch.Tensor | None = None  # tumbling: the answer of the last whole window


class StateBank:
    def __init__(self, template: dict[str, torch.Tensor], window: int | None, capacity: int = 16,
                 tumbling: bool = False) -> None:
        """``template``: a one-stream zero state (``net.init_state(1, h, w)``); ``window``: None for
        unbounded sessions (one row each, never reset); ``tumbling``: one row per session, reset
        every ``window`` frames."""
        if tumbling and window is None:
            raise ValueError("a tumbling window needs a length")
        self.window = window
        self.tumbling = tumbling
        self.rows_per_session = 1 if window is None or tumbling else 2
        self._template = {k: v[:1].clone() for k, v in template.items()}
        self.state = {k: _rows_like(v, capacity) for k, v in self._template.items()}
        self._free = list(range(capacity - 1, -1, -1))
        self._released: list[int] = []  # freed, not yet reusable
        self._lock = threading.Lock()  # free() comes from the event loop, the rest from the inference thread

    @property
    def capacity(self) -> int:
        return next(iter(self.state.values())).shape[0]

    def allocate(self) -> StreamRows:
        need = self.rows_per_session
        with self._lock:
            if len(self._free) < need:
                self._grow(max(self.capacity, need))
            rows = tuple(self._free.pop() for _ in range(need))
        self._reset(list(rows))
        return StreamRows(rows)

    def free(self, stream: StreamRows) -> None:
        """Give the rows back (from any thread). They are reused from the next :meth:`step` on,
        never within a step already under way that may still write them."""
        with self._lock:
            self._released.extend(stream.rows)

    def restart(self, stream: StreamRows) -> None:
        """The stream starts afresh (a failed forward, an unreadable checkpoint)."""
        self._reset(list(stream.rows))
        stream.frames_seen = 0
        stream.counts = [0] * len(stream.rows)
        stream.held = None

    def _grow(self, extra: int) -> None:
        old = self.capacity
        self.state = {k: _rows_like(v, old + extra, v) for k, v in self.state.items()}
        self._free.extend(range(old + extra - 1, old - 1, -1))

    def _reset(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=next(iter(self.state.values())).device)
        for key, value in self.state.items():
            _scatter(value, index, self._template[key].expand(len(rows), *value.shape[1:]))

    def collect(self) -> None:
        """Make the rows freed since the last call reusable (the inference thread, between steps)."""
        with self._lock:
            self._free.extend(self._released)
            self._released.clear()

    @torch.inference_mode()
    def step(self, streams: list[StreamRows], frames: torch.Tensor, forward: Forward) -> torch.Tensor:
        """Feed ``frames[i]`` (``[N, 3, 1, H, W]``) to ``streams[i]``; the answer logits ``[N, classes]``.

        All or nothing: when the forward raises, or gives a non-finite logit (``FloatingPointError``),
        no stream has moved on (a row due for its reset may be zeroed already: it is reset again)."""
        picks: list[int] = []  # frame index per active row
        rows: list[int] = []
        answer: list[int] = []  # position in `rows` of each stream's answer
        reset: list[int] = []
        counts: list[list[int]] = []  # each stream's counts after this frame
        window = self.window
        for index, stream in enumerate(streams):
            active = [0] if self.rows_per_session == 1 or stream.frames_seen < window // 2 else [0, 1]
            after = list(stream.counts)
            best, best_count = -1, -1
            for r in active:
                if window is not None and after[r] >= window:
                    after[r] = 0
                    reset.append(stream.rows[r])
                after[r] += 1
                if after[r] > best_count:
                    best, best_count = len(rows), after[r]
                rows.append(stream.rows[r])
                picks.append(index)
            counts.append(after)
            answer.append(best)
        if reset:
            self._reset(reset)
        device = frames.device
        first = rows[0]
        dense = rows == list(range(first, first + len(rows)))  # the usual case: sessions in row order
        if dense:  # views in, one copy out (as cheap as stacking the states was)
            batch = {k: v[first : first + len(rows)] for k, v in self.state.items()}
        else:
            index = torch.tensor(rows, device=device)
            batch = {k: _gather(v, index) for k, v in self.state.items()}
        video = frames if picks == list(range(len(streams))) else frames[torch.tensor(picks, device=device)]
        logits, new = forward(video, batch)
        if not torch.isfinite(logits).all():
            raise FloatingPointError("non-finite scores")
        answers = logits[torch.tensor(answer, device=logits.device)]
        if self.tumbling:  # before any stream moves on
            answers = self._held(streams, counts, answers)
        for key, value in self.state.items():
            fresh = new[key].to(value.device, value.dtype)
            if dense:
                value[first : first + len(rows)].copy_(fresh)
            else:
                _scatter(value, index, fresh)
        for index, (stream, after) in enumerate(zip(streams, counts, strict=True)):
            stream.counts = after
            stream.frames_seen += 1
            if self.tumbling and after[0] == self.window:  # a whole window: its answer is held
                stream.held = answers[index].clone()
        return answers

    def _held(self, streams: list[StreamRows], counts: list[list[int]], answers: torch.Tensor) -> torch.Tensor:
        """Tumbling windows: a row that will have seen fewer than half a window (after the
        session's first window) answers with the last answer of the window before."""
        window = self.window
        for index, (stream, after) in enumerate(zip(streams, counts, strict=True)):
            count = after[0]
            if count < window // 2 and stream.frames_seen + 1 > count and stream.held is not None:
                answers[index] = stream.held
        return answers

    # --- checkpoints --------------------------------------------------------------------------

    def to_slot(self, stream: StreamRows) -> Slot:
        """The stream's rows as a :class:`Slot` (what checkpoints store), copied to the CPU."""
        states = []
        for r, row in enumerate(stream.rows):
            seen = stream.counts[r] > 0
            states.append({k: v[row : row + 1].cpu().clone() for k, v in self.state.items()} if seen else None)
        if len(states) == 1:
            states.append(None)
            counts = [stream.counts[0], 0]
        else:
            counts = list(stream.counts)
        held = stream.held.cpu().clone() if stream.held is not None else None
        return Slot(window=self.window or 0, frames_seen=stream.frames_seen, states=states, counts=counts, held=held)

    def load_slot(self, stream: StreamRows, slot: Slot) -> None:
        """Put a checkpoint's slot into ``stream``'s rows."""
        for r, row in enumerate(stream.rows):
            state = slot.states[r] if r < len(slot.states) else None
            if state is None:
                self._reset([row])
                stream.counts[r] = 0
                continue
            for key, value in self.state.items():
                value[row : row + 1].copy_(state[key].to(value.device, value.dtype))
            stream.counts[r] = slot.counts[r]
        stream.frames_seen = slot.frames_seen
        stream.held = None
        if self.tumbling and slot.held is not None:
            stream.held = slot.held.to(next(iter(self.state.values())).device)


def _row_major(tensor: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """A view of ``tensor`` whose dims are in its memory order (a channels-last stream buffer as
    ``[N, T, H, W, C]``) and the permutation back, or ``tensor`` itself and None. ``index_select``
    gives a contiguous result whatever its input's layout, and ``index_copy_`` into a strided
    tensor is slow: through this view both copy whole rows (7x faster gathers, a layout the fast
    paths take without another copy)."""
    if tensor.dim() == 5 and not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last_3d):
        return tensor.permute(0, 2, 3, 4, 1), (0, 4, 1, 2, 3)
    return tensor, None


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor.index_select(0, index)`` in ``tensor``'s memory format."""
    view, back = _row_major(tensor)
    rows = view.index_select(0, index)
    return rows if back is None else rows.permute(back)


def _scatter(tensor: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
    """``tensor.index_copy_(0, index, rows)``, fast when both are channels-last."""
    view, back = _row_major(tensor)
    view.index_copy_(0, index, rows if back is None else rows.permute(0, 2, 3, 4, 1))


def _rows_like(template: torch.Tensor, rows: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Zeros for ``rows`` streams in ``template``'s dtype, device and memory format (the fast paths
    keep stream buffers channels-last: a bank in that layout hands them over without a copy), with
    ``keep``'s rows first."""
    out = template.new_zeros((rows, *template.shape[1:]))
    if template.dim() == 5 and not template.is_contiguous() \
            and template.is_contiguous(memory_format=torch.channels_last_3d):
        out = out.contiguous(memory_format=torch.channels_last_3d)
    if keep is not None:
        out[: keep.shape[0]].copy_(keep)
    return out


def smooth(previous: np.ndarray | None, probs: np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential smoothing of scores over frames (``previous`` None: the first frame)."""
    if smoothing <= 0 or previous is None:
        return probs
    return smoothing * previous + (1.0 - smoothing) * probs
