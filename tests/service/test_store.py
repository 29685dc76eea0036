"""The store contract. Every implementation must pass it: in-memory now, Redis with the worker pool
(add its factory to ``STORES``)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.store import Frame, Result, SessionRecord, Store
from service.store.memory import memory_store

STORES = {"memory": lambda cap: memory_store(results_cap=cap)}


@pytest.fixture(params=sorted(STORES))
def make_store(request):
    return STORES[request.param]


def run(coroutine):
    return asyncio.run(coroutine)


def record(session_id: str, created_at: float = 0.0, idle: float = 60.0) -> SessionRecord:
    return SessionRecord(session_id=session_id, token_hash="h", model="m", weights="w", options={"a": 1},
                         created_at=created_at or time.time(), idle_timeout_s=idle,
                         last_active_at=created_at or time.time())


def frame(pts: float) -> Frame:
    return Frame(pts=pts, frame_index=int(pts * 5), received_at=time.time(), height=2, width=2, data=b"x" * 12)


def result(seq: int) -> Result:
    return Result(seq=seq, pts=seq / 5, frame_index=seq - 1, labels=[], lag_ms=1.0, dropped=0, produced_at=0.0)


def test_sessions_crud_counters_and_expiry(make_store):
    async def scenario():
        store: Store = make_store(10)
        await store.sessions.create(record("a", created_at=100.0, idle=10))
        with pytest.raises(KeyError):
            await store.sessions.create(record("a"))
        await store.sessions.add_counters("a", frames_received=3, frames_dropped=1)
        await store.sessions.add_counters("missing", frames_received=1)  # no error
        await store.sessions.set_fields("a", next_frame_index=7)
        got = await store.sessions.get("a")
        assert (got.frames_received, got.frames_dropped, got.next_frame_index) == (3, 1, 7)
        got.frames_received = 99  # a copy: the store is not changed
        assert (await store.sessions.get("a")).frames_received == 3
        assert await store.sessions.expired(109.0) == []
        assert await store.sessions.expired(110.0) == ["a"]
        await store.sessions.touch("a", 105.0)
        assert await store.sessions.expired(110.0) == []
        assert await store.delete_session("a") and not await store.delete_session("a")
        assert await store.sessions.get("a") is None

    run(scenario())


def test_sessions_list_pages_by_creation(make_store):
    async def scenario():
        store = make_store(10)
        for i in range(5):
            await store.sessions.create(record(f"s{i}", created_at=100.0 + i))
        page, cursor = await store.sessions.list(None, 2)
        seen = [r.session_id for r in page]
        while cursor:
            page, cursor = await store.sessions.list(cursor, 2)
            seen += [r.session_id for r in page]
        assert seen == ["s0", "s1", "s2", "s3", "s4"]
        assert await store.sessions.count() == 5

    run(scenario())


def test_frame_log_assigns_seq_and_applies_the_backlog_policy(make_store):
    async def scenario():
        store = make_store(10)
        appended = [await store.frames.append("a", frame(i / 5), max_backlog=3, policy="drop_oldest")
                    for i in range(5)]
        assert [a.seq for a in appended] == [1, 2, 3, 4, 5]
        assert [a.dropped for a in appended] == [0, 0, 0, 1, 1]
        assert await store.frames.backlog("a") == 3
        assert await store.frames.ready_sessions(10) == ["a"]
        taken = [await store.frames.take("a") for _ in range(4)]
        assert [f.seq if f else None for f in taken] == [3, 4, 5, None]
        assert await store.frames.ready_sessions(10) == []
        for i in range(3):
            last = await store.frames.append("b", frame(i), max_backlog=3, policy="newest_only")
        assert last.dropped == 1 and await store.frames.backlog("b") == 1
        assert (await store.frames.take("b")).seq == 3

    run(scenario())


def test_frame_log_serves_sessions_round_robin_and_wakes_waiters(make_store):
    async def scenario():
        store = make_store(10)
        for session_id in ("a", "b"):
            for i in range(2):
                await store.frames.append(session_id, frame(i), max_backlog=5, policy="drop_oldest")
        assert await store.frames.ready_sessions(10) == ["a", "b"]
        await store.frames.take("a")
        assert await store.frames.ready_sessions(10) == ["b", "a"]  # a waits its turn again
        await store.frames.delete("a")
        await store.frames.delete("b")
        started = time.monotonic()
        waiter = asyncio.create_task(store.frames.wait_ready(5.0))
        await asyncio.sleep(0.05)
        await store.frames.append("c", frame(0), max_backlog=5, policy="drop_oldest")
        await waiter
        assert time.monotonic() - started < 1.0

    run(scenario())


def test_results_read_after_seq_are_capped_and_block(make_store):
    async def scenario():
        store = make_store(3)
        for seq in (1, 2, 4, 5):  # seq 3 was dropped before inference
            await store.results.append("a", result(seq))
        with pytest.raises(ValueError):
            await store.results.append("a", result(5))
        assert [r.seq for r in await store.results.read_after("a", 0)] == [2, 4, 5]  # capped at 3
        assert [r.seq for r in await store.results.read_after("a", 2, limit=1)] == [4]
        assert (await store.results.last("a")).seq == 5
        assert await store.results.read_after("a", 5) == []
        reader = asyncio.create_task(store.results.read_after("a", 5, timeout=5.0))
        await asyncio.sleep(0.05)
        await store.results.append("a", result(6))
        assert [r.seq for r in await reader] == [6]
        assert await store.results.read_after("a", 6, timeout=0.05) == []

    run(scenario())


def test_checkpoints_are_bytes(make_store):
    async def scenario():
        store = make_store(3)
        assert await store.checkpoints.load("a") is None
        await store.checkpoints.save("a", 10, b"state")
        await store.checkpoints.save("a", 20, b"newer")
        assert await store.checkpoints.load("a") == (20, b"newer")
        await store.checkpoints.delete("a")
        assert await store.checkpoints.load("a") is None

    run(scenario())
