"""What the store keeps, as plain data: session records, frames, results, leases."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.options import SessionOptions


@dataclass
class SessionRecord:
    """What the store keeps about a session (a Redis hash in the Redis implementation)."""

    session_id: str
    token_hash: str
    model: str
    weights: str
    options: SessionOptions  # the create request resolved against the model and the limits
    created_at: float  # unix seconds
    idle_timeout_s: float
    last_active_at: float
    frames_received: int = 0  # model frames accepted from the client (after resampling)
    frames_processed: int = 0
    frames_dropped: int = 0  # all reasons: backpressure, too large, decode errors
    next_frame_index: int = 0  # first model-frame index of the next input stream
    unused_timeout_s: float = 0.0  # a session that never got a frame expires this long after creation (0: off)
    client: str = ""  # who created it (an API key's hash or an address): its quota; "" = none
    extra: dict[str, Any] = field(default_factory=dict)  # secret: never returned nor logged

    @property
    def expires_at(self) -> float:
        if self.unused_timeout_s > 0 and self.frames_received == 0:
            return min(self.created_at + self.unused_timeout_s, self.last_active_at + self.idle_timeout_s)
        return self.last_active_at + self.idle_timeout_s


@dataclass
class Frame:
    """One model frame waiting for inference: uint8 RGB ``height x width x 3``, already resized (the
    frame log may hold it encoded: ``codec``)."""

    pts: float | None  # seconds, from the source (container pts or client timestamp)
    frame_index: int  # index on the session's model-frame grid (model fps)
    received_at: float  # unix seconds when the gateway had the frame (for lag)
    height: int
    width: int
    data: bytes  # the pixels in ``codec`` (service.store.frame_codec): raw uint8 RGB unless the log encodes them
    seq: int = 0  # assigned by StreamLog.append
    codec: str = "raw"  # how ``data`` is stored: the Redis store encodes on append, the worker decodes


@dataclass
class Appended:
    seq: int
    dropped: int  # frames this append pushed out of the backlog


@dataclass
class Result:
    """One label result, one per model frame, ordered by ``seq`` (the frame's seq)."""

    seq: int
    pts: float | None
    frame_index: int
    labels: list[dict[str, Any]]
    lag_ms: float
    dropped: int  # frames dropped so far in this session, all reasons (set by the commit)
    produced_at: float
    error: str | None = None  # the frame could not be inferred (labels empty)
    events: list[dict[str, Any]] = field(default_factory=list)  # action segments this frame starts/updates/ends


@dataclass
class Lease:
    """A worker's claim on a session. ``token`` is the fencing token: it only grows per session."""

    session_id: str
    worker_id: str
    token: int
    processed_seq: int  # results are committed up to here: frames after it are new
    checkpoint_seq: int = 0  # the checkpoint covers frames up to here (0: none, start afresh)
    checkpoint: bytes | None = None


class StaleLease(Exception):
    """The lease was lost (expired and claimed by another worker, or the session is gone)."""


class SessionsFull(Exception):
    """``SessionStore.create`` refused: the store holds its maximum of sessions."""


class ClientSessionsFull(SessionsFull):
    """``SessionStore.create`` refused: the record's client holds its maximum of sessions."""


@dataclass
class WorkerLoad:
    """What a worker publishes with its heartbeat (admission control reads it)."""

    worker_id: str
    held: int  # sessions it holds
    max_sessions: int
    lag_s: float  # how long frames waited before their forward, smoothed
