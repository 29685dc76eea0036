"""In-memory implementations of the store protocols (the embedded default, one process).

All methods run on the event loop thread; none of them blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections import OrderedDict, deque
from typing import Any

from service.store import Appended, DropPolicy, Frame, Result, SessionRecord, Store


class MemorySessionStore:
    def __init__(self) -> None:
        self._records: OrderedDict[str, SessionRecord] = OrderedDict()  # creation order

    async def create(self, record: SessionRecord) -> None:
        if record.session_id in self._records:
            raise KeyError(f"session {record.session_id} exists")
        self._records[record.session_id] = record

    async def get(self, session_id: str) -> SessionRecord | None:
        record = self._records.get(session_id)
        # A copy, as Redis would give: callers cannot change the store by accident.
        return dataclasses.replace(record, options=dict(record.options), extra=dict(record.extra)) if record else None

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


class MemoryFrameLog:
    def __init__(self) -> None:
        self._pending: dict[str, deque[Frame]] = {}
        self._next_seq: dict[str, int] = {}
        self._ready: OrderedDict[str, None] = OrderedDict()  # sessions with pending frames, FIFO
        self._wakeup = asyncio.Event()

    async def append(self, session_id: str, frame: Frame, *, max_backlog: int, policy: DropPolicy) -> Appended:
        seq = self._next_seq.get(session_id, 0) + 1
        self._next_seq[session_id] = seq
        frame.seq = seq
        pending = self._pending.setdefault(session_id, deque())
        keep = 1 if policy == "newest_only" else max_backlog
        dropped = 0
        while len(pending) >= keep:
            pending.popleft()
            dropped += 1
        pending.append(frame)
        if session_id not in self._ready:
            self._ready[session_id] = None
        self._wakeup.set()
        return Appended(seq=seq, dropped=dropped)

    async def take(self, session_id: str) -> Frame | None:
        pending = self._pending.get(session_id)
        if not pending:
            self._ready.pop(session_id, None)
            return None
        frame = pending.popleft()
        # Round-robin: a session that still has frames goes to the back of the ready queue.
        self._ready.pop(session_id, None)
        if pending:
            self._ready[session_id] = None
        return frame

    async def backlog(self, session_id: str) -> int:
        return len(self._pending.get(session_id, ()))

    async def ready_sessions(self, limit: int) -> list[str]:
        return list(itertools.islice(self._ready, limit))

    async def wait_ready(self, timeout: float) -> None:
        if self._ready:
            return
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            pass

    async def trim(self, session_id: str, upto_seq: int) -> None:
        return None  # taken frames are not kept in memory: nothing to replay in one process

    async def delete(self, session_id: str) -> None:
        self._pending.pop(session_id, None)
        self._next_seq.pop(session_id, None)
        self._ready.pop(session_id, None)


class MemoryResultLog:
    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._results: dict[str, deque[Result]] = {}
        self._changed: dict[str, asyncio.Event] = {}

    def _event(self, session_id: str) -> asyncio.Event:
        return self._changed.setdefault(session_id, asyncio.Event())

    async def append(self, session_id: str, result: Result) -> None:
        results = self._results.setdefault(session_id, deque(maxlen=self._cap))
        if results and result.seq <= results[-1].seq:
            raise ValueError(f"result seq {result.seq} not after {results[-1].seq}")
        results.append(result)
        event = self._changed.pop(session_id, None)  # wake everyone waiting, then start afresh
        if event is not None:
            event.set()

    def _after(self, session_id: str, after_seq: int, limit: int) -> list[Result]:
        results = self._results.get(session_id)
        if not results or results[-1].seq <= after_seq:
            return []
        out = [r for r in results if r.seq > after_seq]
        return out[:limit]

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

    async def delete(self, session_id: str) -> None:
        self._results.pop(session_id, None)
        event = self._changed.pop(session_id, None)
        if event is not None:
            event.set()


class MemoryCheckpointStore:
    def __init__(self) -> None:
        self._checkpoints: dict[str, tuple[int, bytes]] = {}

    async def save(self, session_id: str, seq: int, data: bytes) -> None:
        self._checkpoints[session_id] = (seq, data)

    async def load(self, session_id: str) -> tuple[int, bytes] | None:
        return self._checkpoints.get(session_id)

    async def delete(self, session_id: str) -> None:
        self._checkpoints.pop(session_id, None)


def memory_store(results_cap: int = 1000) -> Store:
    return Store(
        sessions=MemorySessionStore(),
        frames=MemoryFrameLog(),
        results=MemoryResultLog(results_cap),
        checkpoints=MemoryCheckpointStore(),
        kind="memory",
    )
