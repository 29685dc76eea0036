"""The model side of the worker: with :mod:`service.worker.bank`, the only part of the service that
runs torch (the registry builds the models).

A :class:`SessionState` is what a worker keeps of a session it holds: the model, its rows in the
model group's :class:`~service.worker.bank.StateBank` (the states of every session of the group
stacked in batch tensors on the device) and the smoothed scores. The :class:`Runner` steps a
batch of sessions of one group one frame each in one forward (:meth:`Runner.forward`: gather the
rows, forward, scatter back; softmax and top-k for all rows at once), feeds logged frames to a
resumed session (:meth:`Runner.replay`), and writes and reads checkpoints
(:meth:`Runner.encode`, :meth:`Runner.restore`).

Checkpoint bytes are the versioned safetensors state format of :mod:`model.state` (never
pickle): the rows as a slot (:meth:`model.streaming.Slot.to_tensors`) or the unbounded state,
the smoothed scores, and a JSON header. ``half=True`` stores float16 (smaller,
not bit-exact). Everything here blocks: the worker loop calls it in its inference thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import model as movinet
from model.state import state_and_metadata_from_bytes
from model.streaming import Slot
from service.registry import LoadedModel
from service.store import Frame
from service.store.frame_codec import decode_frame
from service.worker.bank import StateBank, StreamRows, smooth
from service.worker.events import EventDetector

CHECKPOINT_KIND = "movinet-session"


@dataclass
class SessionState:
    """One session's model state in the worker that holds it: its rows in the group's bank."""

    session_id: str
    model: LoadedModel
    window: int | None  # None = unbounded: the model pools over every frame since the start
    top_k: int
    min_score: float
    smoothing: float
    stream: StreamRows | None = None  # its rows in the group's StateBank (allocated on first use)
    smoothed: np.ndarray | None = None
    events: EventDetector | None = None  # action segments from the labels (None: off)
    tumbling: bool = False  # one row reset every `window` frames (else two staggered ones)

    @property
    def group(self) -> tuple[str, int | None, bool]:
        """Sessions of one group share a bank and a forward."""
        return (self.model.key, self.window, self.tumbling)


@dataclass
class Step:
    """One frame of one session in a forward; ``probs`` and ``labels`` are filled by it."""

    session: SessionState
    frame: Frame
    probs: np.ndarray | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the forward failed for this session (an error result)
    events: list[dict[str, Any]] = field(default_factory=list)  # action events this frame makes


class Runner:
    """Owns the states of the sessions a worker holds, one :class:`StateBank` per model group."""

    def __init__(self, checkpoint_half: bool = False) -> None:
        self.checkpoint_half = checkpoint_half
        self._banks: dict[tuple[str, int | None, bool], StateBank] = {}

    def bank(self, session: SessionState) -> StateBank:
        bank = self._banks.get(session.group)
        if bank is None:
            with torch.inference_mode():
                template = session.model.init_state(1)  # in the layout and dtype the step reads
            bank = self._banks[session.group] = StateBank(template, session.window, tumbling=session.tumbling)
        return bank

    def _rows(self, session: SessionState) -> StreamRows:
        if session.stream is None:
            session.stream = self.bank(session).allocate()
        return session.stream

    def release(self, session: SessionState) -> None:
        """The worker lets the session go: its rows are free for another."""
        if session.stream is not None:
            self.bank(session).free(session.stream)
            session.stream = None

    def restart(self, session: SessionState) -> None:
        """Start the session's stream afresh (after a failed forward or an unreadable checkpoint)."""
        if session.stream is not None:
            self.bank(session).restart(session.stream)
        session.smoothed = None

    def forward(self, steps: list[Step]) -> None:
        """One batched step (T=1) for ``steps`` of one group; fills probabilities and labels and
        updates the sessions' states. Raises on a failed forward (the caller isolates it)."""
        first = steps[0].session
        loaded = first.model
        pixels = np.stack([np.frombuffer(decode_frame(s.frame.data, s.frame.height, s.frame.width, s.frame.codec),
                                         np.uint8).reshape(s.frame.height, s.frame.width, 3)
                           for s in steps])  # (N, H, W, 3): as logged, so a replay sees what the live run saw
        video = torch.from_numpy(pixels).to(loaded.device or "cpu", non_blocking=True)
        video = video.permute(0, 3, 1, 2).unsqueeze(2).float().div_(255.0)  # (N, 3, 1, H, W)
        bank = self.bank(first)
        bank.collect()  # rows freed while the last forward ran are reusable now, not during one
        streams = [self._rows(s.session) for s in steps]
        with torch.inference_mode():
            logits = bank.step(streams, video, loaded.step)  # (N, classes)
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if not np.isfinite(probs).all():
            raise FloatingPointError("non-finite scores")
        k = min(max(s.session.top_k for s in steps), probs.shape[1])
        for step, row in zip(steps, probs, strict=True):
            session = step.session
            row = smooth(session.smoothed, row, session.smoothing)
            session.smoothed = step.probs = row
        order = np.argsort(-np.stack([s.probs for s in steps]), axis=1, kind="stable")[:, :k]  # (N, k)
        names = loaded.labels
        for step, top in zip(steps, order, strict=True):
            session, row = step.session, step.probs
            step.labels = [{"id": int(i), "name": names[i] if i < len(names) else str(i),
                            "score": round(float(row[i]), 4)}
                           for i in top[: session.top_k] if row[i] >= session.min_score]
            if session.events is not None:
                step.events = session.events.step(row, step.frame.seq, step.frame.pts, time.time())

    def replay(self, session: SessionState, frames: list[Frame]) -> None:
        """Feed logged frames to a resumed session, one at a time as they went the first time."""
        for frame in frames:
            self.forward([Step(session, frame)])

    def encode(self, session: SessionState) -> bytes | None:
        """The session's checkpoint, or None when it has no state yet."""
        if session.stream is None or session.stream.frames_seen == 0:
            return None
        slot = self.bank(session).to_slot(session.stream)
        return encode_checkpoint(slot, session.window is None, session.smoothed, half=self.checkpoint_half,
                                 events=session.events.to_dict() if session.events is not None else None)

    def restore(self, session: SessionState, data: bytes) -> None:
        """Load a checkpoint into ``session``; ``ValueError`` on bytes that are not a session
        checkpoint (the session then starts afresh)."""
        slot, state, smoothed, meta = _decode(data)
        rows = self._rows(session)
        if slot is None and state is not None:  # an unbounded session: one row
            slot = Slot(window=0, frames_seen=1, states=[state, None], counts=[1, 0])
        if slot is None:
            raise ValueError("the checkpoint holds no state")
        held = slot.held
        if held is not None and (held.shape != (len(session.model.labels),) or not torch.isfinite(held).all()):
            raise ValueError("the checkpoint's held answer is not one finite score per class")
        self.bank(session).load_slot(rows, slot)
        session.smoothed = smoothed
        if session.events is not None and isinstance(meta.get("events"), dict):
            session.events.load(meta["events"])


def encode_checkpoint(slot: Slot, unbounded: bool, smoothed: np.ndarray | None, *, half: bool = False,
                      events: dict[str, Any] | None = None) -> bytes:
    """Checkpoint bytes of a session's rows (``unbounded``: row 0 only, as the unbounded state),
    its smoothed scores and its event detector's state."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"kind": CHECKPOINT_KIND}
    if events is not None:
        meta["events"] = events
    if unbounded:
        tensors.update({f"state/{key}": value for key, value in (slot.states[0] or {}).items()})
    else:
        slot_tensors, meta["slot"] = slot.to_tensors()
        tensors.update(slot_tensors)
    if smoothed is not None:
        tensors["smoothed"] = torch.as_tensor(smoothed, dtype=torch.float32)
    return movinet.state_to_bytes(tensors, half=half, metadata=meta)


def decode_checkpoint(data: bytes, device: Any = None) -> tuple[Slot | None, dict[str, torch.Tensor] | None, Any]:
    """``(slot, state, smoothed)`` from checkpoint bytes, the state on ``device`` (default CPU)."""
    return _decode(data, device)[:3]


def _decode(data: bytes, device: Any = None) -> tuple[Slot | None, dict[str, torch.Tensor] | None, Any, dict]:
    tensors, meta = state_and_metadata_from_bytes(data)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError("not a session checkpoint")
    if device is not None:
        tensors = {k: v if k == "smoothed" else v.to(device) for k, v in tensors.items()}
    smoothed = tensors.pop("smoothed", None)
    smoothed = smoothed.numpy() if smoothed is not None else None
    slot = state = None
    if "slot" in meta:
        slot = Slot.from_tensors(tensors, meta["slot"])
    elif any(k.startswith("state/") for k in tensors):
        state = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
    return slot, state, smoothed, meta
