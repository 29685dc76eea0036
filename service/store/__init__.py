"""Storage and queues behind small protocols: session records, frame logs, results, checkpoints.

The embedded default uses :mod:`service.store.memory`; :mod:`service.store.redis` implements the
same protocols for a pool of gateways and workers that share nothing but Redis. One contract test
suite (``tests/store``) runs against both.

* every method is async;
* sequence numbers are assigned by the store, in the same atomic step that applies the backlog
  limit and the drop policy;
* workers lease sessions (:class:`WorkQueue`): a lease has a TTL and a fencing token that only
  grows; a commit (results + progress + optional checkpoint + frame-log trim) is atomic and
  refused for a stale token, so two workers never both advance a session;
* results are read "after seq N" with an optional blocking wait (Redis: ``XREAD BLOCK``), which is
  also how a reconnecting client resumes;
* checkpoints are opaque bytes (:mod:`service.checkpoint`).

Key names for Redis live in :mod:`service.store.keys`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

DropPolicy = Literal["drop_oldest", "newest_only"]

try:  # what a store call raises while the store is away (Redis down, restarting, unreachable)
    from redis.exceptions import RedisError

    STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, ConnectionError, TimeoutError)
except ImportError:  # pragma: no cover - redis is a dependency of the service
    STORE_ERRORS = (ConnectionError, TimeoutError)


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
    async def claim_producer(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        """Take (or renew) the session's one producer slot for ``owner``; False if another holds it.

        Gateways keep one frame producer per session across replicas with it; a dead gateway's
        slot frees itself after ``ttl_ms``."""
        ...
    async def release_producer(self, session_id: str, owner: str) -> None: ...
    async def producer(self, session_id: str) -> str | None:
        """Who holds the producer slot (on any gateway), or None."""
        ...


class FrameLog(Protocol):
    """A session's ordered frame log. Frames stay until a checkpoint covers them (replay)."""

    async def append(self, session_id: str, frame: Frame, *, max_backlog: int, policy: DropPolicy) -> Appended:
        """Give ``frame`` the session's next seq and apply the backlog limit atomically.

        The backlog is the frames not yet processed (seq above the committed progress); over the
        limit, ``drop_oldest`` deletes the oldest of them, ``newest_only`` all but the newest, never
        one that a worker has already taken.
        """
        ...
    async def backlog(self, session_id: str) -> int:
        """Frames appended but not yet processed."""
        ...
    async def delete(self, session_id: str) -> None: ...


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


class WorkQueue(Protocol):
    """How workers find sessions with frames, own them one at a time, and commit exactly once."""

    async def claim(self, worker_id: str, limit: int, ttl_ms: int) -> list[Lease]:
        """Lease up to ``limit`` sessions that have unprocessed frames and no live lease."""
        ...
    async def frames_after(self, session_id: str, after_seq: int, upto_seq: int | None = None,
                           count: int = 1000) -> list[Frame]:
        """Logged frames with ``after_seq < seq <= upto_seq`` (replay after a checkpoint)."""
        ...
    async def take_next(self, cursors: dict[str, tuple[Lease, int]], timeout: float) -> dict[str, Frame]:
        """For each leased session, its first frame after the cursor seq, marked as taken (the
        backlog limit no longer drops it); waits up to ``timeout`` s until one session has one.
        Sessions whose lease is stale are left out."""
        ...
    async def commit(self, lease: Lease, results: list[Result], checkpoint: tuple[int, bytes] | None,
                     ttl_ms: int) -> None:
        """Atomically: append the results whose seq is above the progress, advance the progress,
        save the checkpoint and trim the frame log up to it, renew the lease.

        Raises :class:`StaleLease` (and changes nothing) when ``lease.token`` is no longer the
        session's live lease or the session is gone.
        """
        ...
    async def renew(self, leases: list[Lease], ttl_ms: int) -> list[bool]:
        """Extend live leases; False for each one that is lost."""
        ...
    async def release(self, lease: Lease, checkpoint: tuple[int, bytes] | None) -> None:
        """Save the checkpoint (fenced) and give the session up; another worker may claim it."""
        ...
    async def wait_work(self, timeout: float) -> None:
        """Return when a session may have become claimable, or after ``timeout`` seconds."""
        ...
    async def unclaimed(self) -> int:
        """Sessions with frames waiting that no worker holds (an autoscaling signal)."""
        ...


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
    """Checkpoints are written by :meth:`WorkQueue.commit` / :meth:`WorkQueue.release` (fenced)."""

    async def load(self, session_id: str) -> tuple[int, bytes] | None: ...
    async def delete(self, session_id: str) -> None: ...


@dataclass
class Store:
    sessions: SessionStore
    frames: FrameLog
    results: ResultLog
    checkpoints: CheckpointStore
    work: WorkQueue
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


def create_store(redis_url: str | None, results_cap: int, **redis_options: Any) -> Store:
    """The Redis store when ``redis_url`` is set, else the in-memory one (the embedded default)."""
    if redis_url:
        from service.store.redis import redis_store

        return redis_store(redis_url, results_cap=results_cap, **redis_options)
    from service.store.memory import memory_store

    return memory_store(results_cap=results_cap)
