"""Storage and queues behind small protocols: session records, frame logs, results, checkpoints.

The embedded default uses :mod:`service.store.memory`. The Redis implementation (next step: a
worker pool) implements the same protocols; the shapes are chosen for it:

* every method is async;
* sequence numbers are assigned by the store (Redis: ``INCR`` / stream ids in a Lua script);
* the backlog limit and drop policy are applied by the store in the same step as the append, so
  that one atomic script can do it in Redis;
* results are read "after seq N" with an optional blocking wait (Redis: ``XREAD BLOCK``), which is
  also how a reconnecting client resumes;
* checkpoints are opaque bytes (``model.state_to_bytes``).

Key names for Redis live in :mod:`service.store.keys`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

DropPolicy = Literal["drop_oldest", "newest_only"]


@dataclass
class SessionRecord:
    """What the store keeps about a session (a Redis hash in the Redis implementation)."""

    session_id: str
    token_hash: str
    model: str
    weights: str
    options: dict[str, Any]  # the validated create-request options, JSON-able
    created_at: float  # unix seconds
    idle_timeout_s: float
    last_active_at: float
    frames_received: int = 0  # model frames accepted from the client (after resampling)
    frames_processed: int = 0
    frames_dropped: int = 0  # all reasons: backpressure, too large, decode errors
    next_frame_index: int = 0  # first model-frame index of the next input stream
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        return self.last_active_at + self.idle_timeout_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Frame:
    """One model frame waiting for inference: uint8 RGB ``height x width x 3``, already resized."""

    pts: float | None  # seconds, from the source (container pts or client timestamp)
    frame_index: int  # index on the session's model-frame grid (model fps)
    received_at: float  # unix seconds when the gateway had the frame (for lag)
    height: int
    width: int
    data: bytes
    seq: int = 0  # assigned by FrameLog.append


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
    dropped: int  # frames dropped so far in this session, all reasons
    produced_at: float
    error: str | None = None  # the frame could not be inferred (labels empty)

    def to_message(self) -> dict[str, Any]:
        message = {
            "type": "result",
            "seq": self.seq,
            "pts": self.pts,
            "frame_index": self.frame_index,
            "labels": self.labels,
            "lag_ms": round(self.lag_ms, 2),
            "dropped": self.dropped,
        }
        if self.error:
            message["error"] = self.error
        return message


class SessionStore(Protocol):
    async def create(self, record: SessionRecord) -> None: ...
    async def get(self, session_id: str) -> SessionRecord | None: ...
    async def list(self, cursor: str | None, limit: int) -> tuple[list[SessionRecord], str | None]:
        """A page ordered by creation; ``cursor`` is opaque, returned as the next page's cursor."""
        ...
    async def count(self) -> int: ...
    async def delete(self, session_id: str) -> bool: ...
    async def touch(self, session_id: str, now: float) -> None: ...
    async def add_counters(self, session_id: str, **deltas: int) -> None:
        """Add to integer fields (``frames_received=1``); a no-op on a deleted session."""
        ...
    async def set_fields(self, session_id: str, **fields: Any) -> None: ...
    async def expired(self, now: float) -> list[str]: ...


class FrameLog(Protocol):
    async def append(self, session_id: str, frame: Frame, *, max_backlog: int, policy: DropPolicy) -> Appended:
        """Give ``frame`` the session's next seq and apply the backlog limit atomically."""
        ...
    async def take(self, session_id: str) -> Frame | None:
        """Claim the oldest frame not yet taken (Redis: XREADGROUP COUNT 1)."""
        ...
    async def backlog(self, session_id: str) -> int: ...
    async def ready_sessions(self, limit: int) -> list[str]:
        """Sessions that have frames not yet taken, oldest waiting first."""
        ...
    async def wait_ready(self, timeout: float) -> None:
        """Return when some session may have a frame, or after ``timeout`` seconds."""
        ...
    async def trim(self, session_id: str, upto_seq: int) -> None:
        """Forget frames up to ``upto_seq`` (after a checkpoint covers them)."""
        ...
    async def delete(self, session_id: str) -> None: ...


class ResultLog(Protocol):
    async def append(self, session_id: str, result: Result) -> None:
        """Append and keep at most the newest ``cap`` results; wakes blocked readers."""
        ...
    async def read_after(
        self, session_id: str, after_seq: int, limit: int = 100, timeout: float | None = None
    ) -> list[Result]:
        """Results with ``seq > after_seq``; waits up to ``timeout`` s if none (None = don't wait)."""
        ...
    async def last(self, session_id: str) -> Result | None: ...
    async def delete(self, session_id: str) -> None: ...


class CheckpointStore(Protocol):
    async def save(self, session_id: str, seq: int, data: bytes) -> None: ...
    async def load(self, session_id: str) -> tuple[int, bytes] | None: ...
    async def delete(self, session_id: str) -> None: ...


@dataclass
class Store:
    sessions: SessionStore
    frames: FrameLog
    results: ResultLog
    checkpoints: CheckpointStore
    kind: str = "memory"

    async def ping(self) -> bool:
        return True

    async def delete_session(self, session_id: str) -> bool:
        existed = await self.sessions.delete(session_id)
        await self.frames.delete(session_id)
        await self.results.delete(session_id)
        await self.checkpoints.delete(session_id)
        return existed

    async def close(self) -> None:
        return None


def create_store(redis_url: str | None, results_cap: int) -> Store:
    if redis_url:
        # The Redis store and worker pool are the next step; refuse rather than silently run in memory.
        raise ValueError("MOVINET_REDIS_URL is set, but this version only runs the embedded in-memory "
                         "store; unset MOVINET_REDIS_URL")
    from service.store.memory import memory_store

    return memory_store(results_cap=results_cap)
