"""The Redis scripts count a session's backlog with a counter in its hash: appends and commits
read no logged frame (``INFO commandstats`` says so), the count agrees with the log through
drops, takes and commits, and a record from before the counter gets it counted from the log."""

from __future__ import annotations

import pytest

from service.store import keys
from service.store.redis import redis_store
from tests.store.test_contract import frame, record, result

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def xrange_calls(store) -> int:
    return int((await store.client.info("commandstats")).get("cmdstat_xrange", {}).get("calls", 0))


async def test_appends_and_commits_count_without_reading_the_frames(redis_server):
    redis_server.flush()
    store = redis_store(redis_server.url)
    await store.sessions.create(record("a"))
    before = await xrange_calls(store)
    for i in range(20):
        await store.streams.append("a", frame(i), keep=100)
    [lease] = await store.streams.claim("w", 1, 60_000)
    assert await store.streams.commit(lease, [result(s) for s in range(1, 6)], None, 60_000) == 15
    assert await store.streams.backlog("a") == 15
    assert await xrange_calls(store) == before  # no script copied the backlog's payloads
    await store.close()


async def test_the_counter_follows_drops_of_untaken_frames_and_keeps_the_taken_one(redis_server):
    redis_server.flush()
    store = redis_store(redis_server.url)
    await store.sessions.create(record("a"))
    for i in range(3):
        await store.streams.append("a", frame(i), keep=3)
    [lease] = await store.streams.claim("w", 1, 60_000)
    taken = await store.streams.take_next({"a": (lease, 0)}, 0)  # seq 1 taken, not committed
    assert taken["a"].seq == 1
    appended = [await store.streams.append("a", frame(i), keep=3) for i in range(3, 6)]
    # Three waiting after the taken one are kept: seq 4 fits, 5 and 6 push out 2 and 3.
    assert [a.dropped for a in appended] == [0, 1, 1]
    assert [f.seq for f in await store.streams.frames_after("a", 0)] == [1, 4, 5, 6]
    assert await store.streams.backlog("a") == 4
    assert await store.streams.commit(lease, [result(1)], None, 60_000) == 3
    assert (await store.sessions.get("a")).frames_dropped == 2
    await store.close()


async def test_a_record_without_the_counter_gets_it_counted_from_the_log(redis_server):
    redis_server.flush()
    store = redis_store(redis_server.url)
    await store.sessions.create(record("a"))
    for i in range(4):
        await store.streams.append("a", frame(i), keep=100)
    [lease] = await store.streams.claim("w", 1, 60_000)
    await store.streams.commit(lease, [result(1)], None, 60_000)
    await store.client.hdel(keys.session("a"), "pending")  # as written by a store from before it
    assert await store.streams.backlog("a") == 3
    assert int(await store.client.hget(keys.session("a"), "pending")) == 3
    await store.streams.append("a", frame(4), keep=100)
    assert await store.streams.commit(lease, [result(2)], None, 60_000) == 3
    await store.close()
