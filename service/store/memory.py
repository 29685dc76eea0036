"""In-memory implementations of the store protocols (the embedded default, one process).

All methods run on the event loop thread; none of them blocks. The stream log updates a
session's counters and appends its results through the public methods of the session store and
the result log it is given (``update``, ``append``), as the Redis scripts update the session hash.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from service.store import (
    Appended,
    ClientSessionsFull,
    Frame,
    Lease,
    Result,
    SessionRecord,
    SessionsFull,
    StaleLease,
    Store,
    WorkerLoad,
)


class MemorySessionStore:
    def __init__(self) -> None:
        self._records: OrderedDict[str, SessionRecord] = OrderedDict()  # creation order
        self._producers: dict[str, tuple[str, float]] = {}  # session -> (owner, expires, monotonic s)

    async def create(self, record: SessionRecord, max_sessions: int | None = None,
                     max_per_client: int | None = None) -> None:
        if record.session_id in self._records:
            raise KeyError(f"session {record.session_id} exists")
        if max_sessions is not None and len(self._records) >= max_sessions:
            raise SessionsFull(f"{len(self._records)} sessions")
        if record.client and max_per_client:
            held = sum(r.client == record.client for r in self._records.values())
            if held >= max_per_client:
                raise ClientSessionsFull(f"the client holds {held} sessions")
        self._records[record.session_id] = dataclasses.replace(record, extra=dict(record.extra))

    async def get(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        # A copy, as Redis would give: callers cannot change the store by accident.
        return dataclasses.replace(record, extra=dict(record.extra)) if record else None

    def update(self, session_id: str) -> SessionRecord | None:
        """The live record, for the stream log's atomic updates in this process (None: deleted)."""
        return self._records.get(session_id)

    async def list(self, cursor: str | None, limit: int) -> tuple[list[SessionRecord], str | None]:
        records = list(self._records.values())
        start = 0
        if cursor:
            # Cursor = "<created_at>:<session_id>" of the last item of the previous page.
            created, _, last_id = cursor.partition(":")
            key = (float(created), last_id)
            start = next((i for i, r in enumerate(records) if (r.created_at, r.session_id) > key), len(records))
        page = records[start : start + limit]
        next_cursor = None
        if start + limit < len(records) and page:
            next_cursor = f"{page[-1].created_at!r}:{page[-1].session_id}"
        return [await self.get(r.session_id) for r in page], next_cursor

    async def count(self) -> int:
        return len(self._records)

    async def delete(self, session_id: str) -> bool:
        self._producers.pop(session_id, None)
        return self._records.pop(session_id, None) is not None

    async def touch(self, session_id: str, now: float) -> None:
        record = self._records.get(session_id)
        if record is not None:
            record.last_active_at = max(record.last_active_at, now)

    async def add_counters(self, session_id: str, **deltas: int) -> None:
        record = self._records.get(session_id)
        if record is not None:
            for name, delta in deltas.items():
                setattr(record, name, getattr(record, name) + delta)

    async def set_fields(self, session_id: str, **fields: Any) -> None:
        record = self._records.get(session_id)
        if record is not None:
            for name, value in fields.items():
                if not hasattr(record, name):
                    raise AttributeError(name)
                setattr(record, name, value)

    async def expired(self, now: float) -> list[str]:
        return [r.session_id for r in self._records.values() if r.expires_at <= now]

    async def claim_producer(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        if session_id not in self._records:  # deleted: no slot to keep (nothing left behind)
            return True
        held = self._producers.get(session_id)
        now = time.monotonic()
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._producers[session_id] = (owner, now + ttl_ms / 1000.0)
        return True

    async def producer(self, session_id: str) -> str | None:
        held = self._producers.get(session_id)
        return held[0] if held is not None and held[1] > time.monotonic() else None

    async def release_producer(self, session_id: str, owner: str) -> None:
        if self._producers.get(session_id, (None,))[0] == owner:
            del self._producers[session_id]


def newer(items: deque, after_seq: int) -> list:
    """The items of ``items`` (in seq order) whose seq is above ``after_seq``, read from the end:
    a reader is most often a frame or a result behind, and a session's log holds up to
    ``results_cap`` results (a scan from the front cost every read and every append the whole log)."""
    count = 0
    for item in reversed(items):
        if item.seq <= after_seq:
            break
        count += 1
    tail = list(islice(reversed(items), count))
    tail.reverse()
    return tail


@dataclass
class _Log:
    """One session's frames and progress (what Redis keeps in the session's keys)."""

    frames: deque[Frame] = field(default_factory=deque)  # seq order; trimmed up to the checkpoint
    last_seq: int = 0
    processed_seq: int = 0
    taken_seq: int = 0  # the last frame a worker took: not dropped by backpressure any more
    fence: int = 0
    lease: tuple[str, int, float] | None = None  # worker, token, expires (monotonic seconds)
    due: bool = False  # listed as claimable (Redis: in the ready set)
    last_append: tuple[int, float] | None = None  # (frame_index, received_at) of the last frame appended

    def pending(self) -> int:
        return len(newer(self.frames, self.processed_seq))

    def leased(self, now: float) -> bool:
        return self.lease is not None and self.lease[2] > now


class MemoryStreamLog:
    """Frame logs, leases and checkpoints of every session, in this process."""

    def __init__(self, sessions: MemorySessionStore, results: MemoryResultLog) -> None:
        self._sessions = sessions
        self._results = results
        self._logs: dict[str, _Log] = {}
        self._checkpoints: dict[str, tuple[int, bytes]] = {}
        self._wakeup = asyncio.Event()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    # --- frames ---------------------------------------------------------------------------------

    async def append(self, session_id: str, frame: Frame, *, keep: int) -> Appended:
        record = self._sessions.update(session_id)
        if record is None:
            raise KeyError(f"session {session_id} is gone")
        log = self._logs.setdefault(session_id, _Log())
        if log.last_append == (frame.frame_index, frame.received_at):  # a resend: already logged
            frame.seq = log.last_seq
            return Appended(seq=log.last_seq, dropped=0)
        log.last_append = (frame.frame_index, frame.received_at)
        # The frame grid goes on after this frame, whatever happens to the socket.
        record.next_frame_index = max(record.next_frame_index, frame.frame_index + 1)
        log.last_seq += 1
        frame.seq = log.last_seq
        log.frames.append(frame)
        pending = newer(log.frames, max(log.processed_seq, log.taken_seq))
        doomed = {f.seq for f in pending[: max(0, len(pending) - keep)]}
        if doomed:
            log.frames = deque(f for f in log.frames if f.seq not in doomed)
        record.frames_received += 1
        record.frames_dropped += len(doomed)
        log.due = True
        self._wake()
        return Appended(seq=frame.seq, dropped=len(doomed))

    async def backlog(self, session_id: str) -> int:
        log = self._logs.get(session_id)
        return log.pending() if log else 0

    async def delete(self, session_id: str) -> None:
        self._logs.pop(session_id, None)
        self._checkpoints.pop(session_id, None)
        self._wake()

    async def checkpoint(self, session_id: str) -> tuple[int, bytes] | None:
        return self._checkpoints.get(session_id)

    # --- leases -----------------------------------------------------------------------------------

    async def claim(self, worker_id: str, limit: int, ttl_ms: int) -> list[Lease]:
        now = time.monotonic()
        leases = []
        for session_id, log in list(self._logs.items()):
            if len(leases) >= limit:
                break
            if not log.due or log.leased(now):
                continue
            if log.pending() == 0:
                log.due = False
                continue
            log.fence += 1
            log.lease = (worker_id, log.fence, now + ttl_ms / 1000.0)
            seq, data = self._checkpoints.get(session_id, (0, None))
            leases.append(Lease(session_id, worker_id, log.fence, log.processed_seq, seq, data))
        return leases

    def _live(self, lease: Lease) -> _Log:
        log = self._logs.get(lease.session_id)
        if (log is None or log.lease is None or log.lease[:2] != (lease.worker_id, lease.token)
                or log.lease[2] <= time.monotonic() or self._sessions.update(lease.session_id) is None):
            raise StaleLease(f"lease {lease.token} on {lease.session_id} is no longer live")
        return log

    async def frames_after(self, session_id: str, after_seq: int, upto_seq: int | None = None,
                           count: int = 1000) -> list[Frame]:
        log = self._logs.get(session_id)
        if log is None:
            return []
        found = newer(log.frames, after_seq)
        return [f for f in found[:count] if upto_seq is None or f.seq <= upto_seq]

    async def take_next(self, cursors: dict[str, tuple[Lease, int]], timeout: float) -> dict[str, Frame]:
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for session_id, (lease, cursor) in cursors.items():
                try:
                    log = self._live(lease)
                except StaleLease:
                    continue
                frames = await self.frames_after(session_id, cursor, count=1)
                if frames:
                    found[session_id] = frames[0]
                    log.taken_seq = max(log.taken_seq, frames[0].seq)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            wakeup = self._wakeup
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except TimeoutError:
                pass

    async def commit(self, lease: Lease, results: list[Result], checkpoint: tuple[int, bytes] | None,
                     ttl_ms: int) -> int:
        log = self._live(lease)
        fresh = [r for r in results if r.seq > log.processed_seq]
        record = self._sessions.update(lease.session_id)
        assert record is not None  # _live checked it
        for result in fresh:
            result.dropped = record.frames_dropped
            await self._results.append(lease.session_id, result)
            log.processed_seq = result.seq
        record.frames_processed += len(fresh)
        if checkpoint is not None:
            self._save_checkpoint(lease.session_id, log, checkpoint)
        log.lease = (lease.worker_id, lease.token, time.monotonic() + ttl_ms / 1000.0)
        return log.pending()

    def _save_checkpoint(self, session_id: str, log: _Log, checkpoint: tuple[int, bytes]) -> None:
        seq, data = checkpoint
        if seq <= 0 or seq > log.processed_seq:  # none, or ahead of what is committed: not a resume point
            return
        self._checkpoints[session_id] = (seq, data)
        while log.frames and log.frames[0].seq <= seq:
            log.frames.popleft()

    async def renew(self, leases: list[Lease], ttl_ms: int) -> list[bool]:
        alive = []
        for lease in leases:
            try:
                log = self._live(lease)
            except StaleLease:
                alive.append(False)
                continue
            log.lease = (lease.worker_id, lease.token, time.monotonic() + ttl_ms / 1000.0)
            alive.append(True)
        return alive

    async def release(self, lease: Lease, checkpoint: tuple[int, bytes] | None) -> None:
        log = self._live(lease)
        if checkpoint is not None:
            self._save_checkpoint(lease.session_id, log, checkpoint)
        log.lease = None
        log.due = log.pending() > 0
        self._wake()

    async def wait_work(self, timeout: float) -> None:
        now = time.monotonic()
        if any(log.due and not log.leased(now) for log in self._logs.values()):
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            pass

    async def heartbeat(self, worker_id: str, ttl_ms: int, load: WorkerLoad | None = None) -> None:
        """One process: a worker that dies takes the store with it; its load is read directly."""

    async def pool_load(self) -> list[WorkerLoad]:
        return []

    async def unclaimed(self) -> int:
        now = time.monotonic()
        return sum(1 for log in self._logs.values() if not log.leased(now) and log.pending() > 0)


EVENTS_CAP = 500  # events kept per session


class MemoryResultLog:
    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._results: dict[str, deque[Result]] = {}
        self._events: dict[str, deque[dict[str, Any]]] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def _event(self, session_id: str) -> asyncio.Event:
        return self._changed.setdefault(session_id, asyncio.Event())

    async def append(self, session_id: str, result: Result) -> None:
        results = self._results.setdefault(session_id, deque(maxlen=self._cap))
        if results and result.seq <= results[-1].seq:
            raise ValueError(f"result seq {result.seq} not after {results[-1].seq}")
        results.append(result)
        if result.events:
            self._events.setdefault(session_id, deque(maxlen=EVENTS_CAP)).extend(result.events)
        event = self._changed.pop(session_id, None)  # wake everyone waiting, then start afresh
        if event is not None:
            event.set()

    def _after(self, session_id: str, after_seq: int, limit: int) -> list[Result]:
        results = self._results.get(session_id)
        if not results or results[-1].seq <= after_seq:
            return []
        return newer(results, after_seq)[:limit]

    async def read_after(
        self, session_id: str, after_seq: int, limit: int = 100, timeout: float | None = None
    ) -> list[Result]:
        found = self._after(session_id, after_seq, limit)
        if found or not timeout:
            return found
        event = self._event(session_id)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return []
        return self._after(session_id, after_seq, limit)

    async def last(self, session_id: str) -> Result | None:
        results = self._results.get(session_id)
        return results[-1] if results else None

    async def events(self, session_id: str, limit: int = 500) -> list[dict[str, Any]]:
        return list(self._events.get(session_id, ()))[-limit:]

    async def delete(self, session_id: str) -> None:
        self._results.pop(session_id, None)
        self._events.pop(session_id, None)
        event = self._changed.pop(session_id, None)
        if event is not None:
            event.set()


def memory_store(results_cap: int = 1000) -> Store:
    sessions = MemorySessionStore()
    results = MemoryResultLog(results_cap)
    return Store(sessions=sessions, streams=MemoryStreamLog(sessions, results), results=results, kind="memory")
