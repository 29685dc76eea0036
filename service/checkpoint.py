"""A session's checkpoint: what a worker needs to resume it exactly where the last one stopped.

The bytes are the versioned safetensors state format of :mod:`model.state` (never pickle): the
stream state (both rows of a windowed slot, or the unbounded state), the smoothed scores, and a
JSON header with the slot's counters. ``half=True`` stores float16 (smaller, not bit-exact).
"""

from __future__ import annotations

import json
from typing import Any

import torch

import model as movinet
from model.state import state_and_metadata_from_bytes
from model.streaming import Slot

CHECKPOINT_KIND = "movinet-session"


def encode(slot: Slot | None, state: dict[str, torch.Tensor] | None, smoothed: Any, *, half: bool = False) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"kind": CHECKPOINT_KIND}
    if slot is not None:
        for row, row_state in enumerate(slot.states):
            for key, value in (row_state or {}).items():
                tensors[f"row{row}/{key}"] = value
        meta["slot"] = {"window": slot.window, "frames_seen": slot.frames_seen, "counts": slot.counts,
                        "rows": [s is not None for s in slot.states]}
    elif state is not None:
        tensors.update({f"state/{key}": value for key, value in state.items()})
    if smoothed is not None:
        tensors["smoothed"] = torch.as_tensor(smoothed, dtype=torch.float32)
    return movinet.state_to_bytes(tensors, half=half, metadata=meta)


def decode(data: bytes, device: Any = None) -> tuple[Slot | None, dict[str, torch.Tensor] | None, Any]:
    """``(slot, state, smoothed)`` with the state on ``device`` (default CPU); raises ``ValueError``
    on bytes that are not a session checkpoint."""
    tensors, meta = state_and_metadata_from_bytes(data)
    if device is not None:
        tensors = {k: v if k == "smoothed" else v.to(device) for k, v in tensors.items()}
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError("not a session checkpoint")
    smoothed = tensors.pop("smoothed", None)
    smoothed = smoothed.numpy() if smoothed is not None else None
    slot = state = None
    if "slot" in meta:
        info = meta["slot"] if isinstance(meta["slot"], dict) else json.loads(meta["slot"])
        states = []
        for row, present in enumerate(info["rows"]):
            prefix = f"row{row}/"
            states.append({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)} if present else None)
        slot = Slot(window=info["window"], frames_seen=info["frames_seen"], states=states, counts=list(info["counts"]))
    elif any(k.startswith("state/") for k in tensors):
        state = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
    return slot, state, smoothed
