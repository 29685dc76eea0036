"""Storage behind three protocols, one per owner of the data, and the records they keep.

* :class:`SessionStore` — the gateway's: session records, their counters and idle deadlines,
  the one-producer slot;
* :class:`StreamLog` — one session's stream of work: the frame log (seq assigned and backlog
  policy applied in the append, which also counts), the lease that lets one worker own the
  session, the checkpoint that lets the next one resume it;
* :class:`ResultLog` — the labels, readable after a seq with a blocking wait (how sockets
  deliver them and how a reconnecting client resumes).

The embedded default is :mod:`service.store.memory`; :mod:`service.store.redis` is the same for a
pool of gateways and workers that share nothing but Redis. One contract suite (``tests/store``)
runs against both. Every method is async. A lease has a TTL and a fencing token that only grows;
a commit (results + progress + optional checkpoint + frame-log trim) is atomic and refused for a
stale token, so two workers never both advance a session. Checkpoints are opaque bytes
(:mod:`service.worker.runner` writes and reads them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.options import DropPolicy, SessionOptions
from service.store.records import (
    Appended,
    ClientSessionsFull,
    Frame,
    Lease,
    Result,
    SessionRecord,
    SessionsFull,
    StaleLease,
    WorkerLoad,
)

__all__ = ["STORE_ERRORS", "Appended", "ClientSessionsFull", "DropPolicy", "Frame", "Lease", "Result", "ResultLog", "SessionOptions",
           "SessionRecord", "SessionStore", "SessionsFull", "StaleLease", "Store", "StreamLog", "WorkerLoad",
           "create_store"]

try:  # what a store call raises while the store is away (Redis down, restarting, unreachable)
    from redis.exceptions import RedisClusterException, RedisError

    # RedisClusterException is not a RedisError: a Cluster client raises it when it cannot map the
    # cluster (no node answers, slots uncovered) or a slot (SlotNotCoveredError), as in a failover.
    STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException, ConnectionError,
                                                     TimeoutError)
except ImportError:  # pragma: no cover - redis is a dependency of the service
    STORE_ERRORS = (ConnectionError, TimeoutError)


class SessionStore(Protocol):
    async def create(self, record: SessionRecord, max_sessions: int | None = None,
                     max_per_client: int | None = None) -> None:
        """Store a new record; raises ``KeyError`` if it exists, :class:`SessionsFull` when
        ``max_sessions`` are held already and :class:`ClientSessionsFull` when the record's
        ``client`` holds ``max_per_client`` (checked and written in one atomic step). A deleted
        session gives its place back."""
        ...
    async def get(self, session_id: str) -> SessionRecord | None: ...
    async def list(self, cursor: str | None, limit: int) -> tuple[list[SessionRecord], str | None]:
        """A page ordered by creation; ``cursor`` is opaque, returned as the next page's cursor."""
        ...
    async def count(self) -> int: ...
    async def delete(self, session_id: str) -> bool: ...
    async def touch(self, session_id: str, now: float) -> None:
        """Move the idle deadline (a no-op on a deleted session, which leaves nothing behind)."""
        ...
    async def add_counters(self, session_id: str, **deltas: int) -> None:
        """Add to integer fields (``frames_received=1``); a no-op on a deleted session."""
        ...
    async def set_fields(self, session_id: str, **fields: Any) -> None: ...
    async def expired(self, now: float) -> list[str]: ...
    async def claim_producer(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        """Take (or renew) the session's one producer slot for ``owner``; False if another holds it.

        Gateways keep one frame producer per session across replicas with it; a dead gateway's
        slot frees itself after ``ttl_ms``. On a deleted session it keeps nothing (and says True:
        no one else holds it), so a renewal racing the delete leaves no slot behind."""
        ...
    async def release_producer(self, session_id: str, owner: str) -> None: ...
    async def producer(self, session_id: str) -> str | None:
        """Who holds the producer slot (on any gateway), or None."""
        ...


class StreamLog(Protocol):
    """Per session: the frames (kept until a checkpoint covers them), the lease, the checkpoint."""

    async def append(self, session_id: str, frame: Frame, *, keep: int) -> Appended:
        """Give ``frame`` the session's next seq and apply the backlog limit, atomically, with the
        record's counters (``frames_received``, ``frames_dropped``, ``next_frame_index``).

        The backlog is the frames not yet processed; more than ``keep`` of them and the oldest
        are deleted, never one that a worker has already taken. The same frame appended again
        (``frame_index`` and ``received_at`` equal to the last append's: a resend after a lost
        reply) gets that append's seq and logs nothing. Raises ``KeyError`` for a deleted session.
        """
        ...

    async def backlog(self, session_id: str) -> int:
        """Frames appended but not yet processed."""
        ...

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
                     ttl_ms: int) -> int:
        """Atomically: append the results whose seq is above the progress, advance the progress,
        save the checkpoint and trim the frame log up to it, renew the lease. Returns the
        session's backlog after it.

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

    async def checkpoint(self, session_id: str) -> tuple[int, bytes] | None:
        """The last checkpoint ``(seq, bytes)``, if any."""
        ...

    async def wait_work(self, timeout: float) -> None:
        """Return when a session may have become claimable, or after ``timeout`` seconds."""
        ...

    async def heartbeat(self, worker_id: str, ttl_ms: int, load: WorkerLoad | None = None) -> None:
        """The worker is alive (and how loaded). With several workers, a held session whose
        holder's process is known to be gone may be claimed before its lease (``ttl_ms``) runs
        out: a crash costs about half a lease."""
        ...

    async def pool_load(self) -> list[WorkerLoad]:
        """What the live workers published with their heartbeats."""
        ...

    async def unclaimed(self) -> int:
        """Sessions with frames waiting that no worker holds (an autoscaling signal)."""
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

    async def events(self, session_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """The session's latest action events (those committed with its results), oldest first."""
        ...

    async def delete(self, session_id: str) -> None: ...


@dataclass
class Store:
    sessions: SessionStore
    streams: StreamLog
    results: ResultLog
    kind: str = "memory"

    async def ping(self) -> bool:
        return True

    async def delete_session(self, session_id: str) -> bool:
        existed = await self.sessions.delete(session_id)
        await self.streams.delete(session_id)
        await self.results.delete(session_id)
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
