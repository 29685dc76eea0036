"""Stream states of several sessions: stack them into one batch, split them back, (de)serialise.

A state is a flat ``dict[str, Tensor]`` whose tensors all have the batch dimension first, so
stacking is ``torch.cat`` along dim 0 and splitting is slicing. The byte format is safetensors
with a small versioned header (never pickle): any process that has the same model can resume.
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

State = dict[str, Tensor]

STATE_FORMAT = "movinet-state"
STATE_FORMAT_VERSION = 1


def stack_states(states: list[State]) -> State:
    """Concatenate the states of several sessions (each of any batch size) along the batch."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    keys = states[0].keys()
    for index, state in enumerate(states[1:], start=1):
        if state.keys() != keys:
            diff = sorted(set(state) ^ set(keys))[:5]
            raise ValueError(f"state {index} has other keys than state 0 (differences: {diff})")
    return {key: torch.cat([state[key] for state in states], dim=0) for key in keys}


def split_states(state: State, sizes: list[int] | None = None) -> list[State]:
    """Split a batched state into per-session states (batch 1 each, or ``sizes``)."""
    if not state:
        raise ValueError("cannot split an empty state (base models have none)")
    batch = next(iter(state.values())).shape[0]
    sizes = sizes or [1] * batch
    if sum(sizes) != batch:
        raise ValueError(f"sizes {sizes} do not add up to the batch {batch}")
    parts = {key: torch.split(value, sizes, dim=0) for key, value in state.items()}
    return [{key: parts[key][i] for key in state} for i in range(len(sizes))]


def state_to_bytes(state: State, *, half: bool = False, metadata: dict | None = None) -> bytes:
    """Serialise ``state`` (safetensors), every tensor in its own dtype (a bf16 stream buffer as bf16:
    exact, half the bytes of float32). ``half=True`` stores the float32 tensors as float16 (not exact)."""
    tensors = {}
    for key, value in state.items():
        value = value.detach().to("cpu")
        if half and value.dtype == torch.float32:
            value = value.to(torch.float16)
        tensors[key] = value.contiguous()
    header = {
        "format": STATE_FORMAT,
        "version": str(STATE_FORMAT_VERSION),
        "extra": json.dumps(metadata or {}),
    }
    return st_save(tensors, metadata=header)


def state_from_bytes(data: bytes, *, dtype: torch.dtype = torch.float32) -> State:
    """Inverse of :func:`state_to_bytes`; float tensors come back as ``dtype``."""
    state, _ = state_and_metadata_from_bytes(data, dtype=dtype)
    return state


def state_and_metadata_from_bytes(data: bytes, *, dtype: torch.dtype = torch.float32) -> tuple[State, dict]:
    if len(data) < 8:
        raise ValueError("state bytes are truncated")
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as error:
        raise ValueError(f"state bytes have no valid header: {error}") from None
    meta = header.get("__metadata__", {})
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"not a {STATE_FORMAT} blob (format={meta.get('format')!r})")
    if int(meta.get("version", -1)) != STATE_FORMAT_VERSION:
        raise ValueError(f"unsupported state format version {meta.get('version')}")
    tensors = st_load(data)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, json.loads(meta.get("extra", "{}"))
