"""The model side of the worker: the only module of the service that touches torch.

A :class:`SessionState` is what a worker keeps of a session it holds: the model, the stream state
(both rows of a windowed slot, or the unbounded state) and the smoothed scores. The
:class:`Runner` steps a batch of sessions of one model group one frame each in one forward
(:meth:`Runner.forward`), feeds logged frames to a resumed session (:meth:`Runner.replay`),
and writes and reads checkpoints (:meth:`Runner.encode`, :meth:`Runner.restore`).

Checkpoint bytes are the versioned safetensors state format of :mod:`model.state` (never
pickle): the slot's tensors and counters (:meth:`model.streaming.Slot.to_tensors`) or the
unbounded state, the smoothed scores, and a JSON header. ``half=True`` stores float16 (smaller,
not bit-exact). Everything here blocks: the worker loop calls it in its inference thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import model as movinet
from model.state import state_and_metadata_from_bytes
from model.streaming import Slot
from service.registry import LoadedModel
from service.store import Frame

CHECKPOINT_KIND = "movinet-session"


@dataclass
class SessionState:
    """One session's model state in the worker that holds it."""

    session_id: str
    model: LoadedModel
    window: int | None  # None = unbounded: the model pools over every frame since the start
    top_k: int
    min_score: float
    smoothing: float
    slot: Slot | None = None  # windowed
    state: dict[str, torch.Tensor] | None = None  # unbounded
    smoothed: np.ndarray | None = None

    @property
    def group(self) -> tuple[str, int | None]:
        """Sessions of one group share a forward."""
        return (self.model.key, self.window)

    def reset(self) -> None:
        self.slot = self.state = self.smoothed = None


@dataclass
class Step:
    """One frame of one session in a forward; ``probs`` and ``labels`` are filled by it."""

    session: SessionState
    frame: Frame
    probs: np.ndarray | None = None
    labels: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # the forward failed for this session (an error result)


class Runner:
    def __init__(self, checkpoint_half: bool = False) -> None:
        self.checkpoint_half = checkpoint_half

    def forward(self, steps: list[Step]) -> None:
        """One batched step (T=1) for ``steps`` of one group; fills probabilities and labels and
        updates the sessions' states. Raises on a failed forward (the caller isolates it)."""
        first = steps[0].session
        loaded = first.model
        size = loaded.input_size
        pixels = np.stack([np.frombuffer(s.frame.data, np.uint8).reshape(s.frame.height, s.frame.width, 3)
                           for s in steps])  # (N, H, W, 3)
        video = torch.from_numpy(pixels).to(loaded.device or "cpu", non_blocking=True)
        video = video.permute(0, 3, 1, 2).unsqueeze(2).float().div_(255.0)  # (N, 3, 1, H, W)
        with torch.inference_mode():
            if first.window is None:
                states = []
                for step in steps:
                    if step.session.state is None:
                        step.session.state = loaded.net.init_state(1, size, size)
                    states.append(step.session.state)
                logits, state = loaded.step(video, movinet.stack_states(states))  # (N, classes)
                for step, new_state in zip(steps, movinet.split_states(state), strict=True):
                    step.session.state = new_state
            else:
                stream = loaded.windowed(first.window)
                for step in steps:
                    if step.session.slot is None:
                        step.session.slot = stream.new_slot()
                logits = stream.step([s.session.slot for s in steps], video)  # (N, classes)
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        if not np.isfinite(probs).all():
            raise FloatingPointError("non-finite scores")
        for step, row in zip(steps, probs, strict=True):
            session = step.session
            if session.smoothing > 0 and session.smoothed is not None:
                row = session.smoothing * session.smoothed + (1.0 - session.smoothing) * row
            session.smoothed = row
            step.probs = row
            step.labels = top_labels(row, loaded.labels, session.top_k, session.min_score)

    def replay(self, session: SessionState, frames: list[Frame]) -> None:
        """Feed logged frames to a resumed session, one at a time as they went the first time."""
        for frame in frames:
            self.forward([Step(session, frame)])

    def encode(self, session: SessionState) -> bytes | None:
        """The session's checkpoint, or None when it has no state yet."""
        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {"kind": CHECKPOINT_KIND}
        if session.slot is not None:
            slot_tensors, meta["slot"] = session.slot.to_tensors()
            tensors.update(slot_tensors)
        elif session.state is not None:
            tensors.update({f"state/{key}": value for key, value in session.state.items()})
        else:
            return None
        if session.smoothed is not None:
            tensors["smoothed"] = torch.as_tensor(session.smoothed, dtype=torch.float32)
        return movinet.state_to_bytes(tensors, half=self.checkpoint_half, metadata=meta)

    def restore(self, session: SessionState, data: bytes) -> None:
        """Load a checkpoint into ``session`` (on its model's device); ``ValueError`` on bytes that
        are not a session checkpoint."""
        session.slot, session.state, session.smoothed = decode_checkpoint(data, session.model.device)


def decode_checkpoint(data: bytes, device: Any = None) -> tuple[Slot | None, dict[str, torch.Tensor] | None, Any]:
    """``(slot, state, smoothed)`` from checkpoint bytes, the state on ``device`` (default CPU)."""
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
    return slot, state, smoothed


def top_labels(probs: np.ndarray, names: list[str], top_k: int, min_score: float) -> list[dict[str, Any]]:
    """The ``top_k`` classes by score (at least ``min_score``), best first."""
    k = min(top_k, probs.shape[0])
    top = np.argpartition(-probs, k - 1)[:k]
    top = top[np.argsort(-probs[top], kind="stable")]
    return [{"id": int(i), "name": names[i] if i < len(names) else str(i), "score": round(float(probs[i]), 4)}
            for i in top if probs[i] >= min_score]
