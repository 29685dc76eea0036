"""The store contract: the in-memory store (embedded default) and the Redis store (a real
``redis-server`` started by the tests) must behave the same, method by method."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from service.options import SessionOptions, WindowOptions
from service.store import (
    ClientSessionsFull,
    Frame,
    Lease,
    Result,
    SessionRecord,
    SessionsFull,
    StaleLease,
    Store,
    keys,
)
from service.store.memory import memory_store
from service.store.redis import redis_store


@pytest.fixture(params=["memory", "redis", "cluster", "sentinel"])
def make_store(request):
    """Memory, one Redis, a Redis Cluster (six nodes, the indexes in buckets on several shards) and
    a Sentinel-managed primary: the same contract on each."""
    if request.param == "memory":
        return lambda cap=10: memory_store(results_cap=cap)
    server = request.getfixturevalue({"redis": "redis_server", "cluster": "redis_cluster",
                                      "sentinel": "redis_sentinel"}[request.param])
    server.flush()
    return lambda cap=10: redis_store(server.url, results_cap=cap)


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


OPTIONS = SessionOptions(top_k=3, window=WindowOptions(frames=12))


def record(session_id: str, created_at: float = 0.0, idle: float = 60.0) -> SessionRecord:
    return SessionRecord(session_id=session_id, token_hash="h", model="m", weights="w", options=OPTIONS,
                         created_at=created_at or time.time(), idle_timeout_s=idle,
                         last_active_at=created_at or time.time())


def frame(i: int) -> Frame:
    return Frame(pts=i / 5, frame_index=i, received_at=time.time(), height=2, width=2, data=bytes([i % 256]) * 12)


def result(seq: int) -> Result:
    return Result(seq=seq, pts=seq / 5, frame_index=seq - 1, labels=[{"id": 1, "name": "x", "score": 0.5}],
                  lag_ms=1.0, dropped=0, produced_at=0.0)


async def with_frames(store: Store, session_id: str, count: int, max_backlog: int = 100) -> None:
    await store.sessions.create(record(session_id))
    for i in range(count):
        await store.streams.append(session_id, frame(i), keep=max_backlog)


# --- sessions -------------------------------------------------------------------------------------


async def test_sessions_crud_counters_and_expiry(make_store):
    store: Store = make_store()
    await store.sessions.create(record("a", created_at=100.0, idle=10))
    with pytest.raises(KeyError):
        await store.sessions.create(record("a"))
    await store.sessions.add_counters("a", frames_received=3, frames_dropped=1)
    await store.sessions.add_counters("missing", frames_received=1)  # no error, nothing created
    assert await store.sessions.get("missing") is None
    await store.sessions.set_fields("a", next_frame_index=7)
    got = await store.sessions.get("a")
    assert (got.frames_received, got.frames_dropped, got.next_frame_index) == (3, 1, 7)
    assert got.options == OPTIONS and got.created_at == 100.0
    got.frames_received = 99  # a copy: the store is not changed
    assert (await store.sessions.get("a")).frames_received == 3
    assert await store.sessions.expired(109.0) == []
    assert await store.sessions.expired(110.0) == ["a"]
    await store.sessions.touch("a", 105.0)
    assert await store.sessions.expired(110.0) == []
    assert await store.delete_session("a") and not await store.delete_session("a")
    assert await store.sessions.get("a") is None
    await store.close()


async def test_sessions_list_pages_by_creation(make_store):
    store = make_store()
    for i in range(5):
        await store.sessions.create(record(f"s{i}", created_at=100.0 + i))
    page, cursor = await store.sessions.list(None, 2)
    seen = [r.session_id for r in page]
    while cursor:
        page, cursor = await store.sessions.list(cursor, 2)
        seen += [r.session_id for r in page]
    assert seen == ["s0", "s1", "s2", "s3", "s4"]
    assert await store.sessions.count() == 5
    await store.close()


async def test_one_producer_slot_per_session(make_store):
    store = make_store()
    await store.sessions.create(record("a"))
    assert await store.sessions.producer("a") is None
    assert await store.sessions.claim_producer("a", "gw1:1", 300)
    assert await store.sessions.producer("a") == "gw1:1"
    assert not await store.sessions.claim_producer("a", "gw2:1", 300)
    assert await store.sessions.claim_producer("a", "gw1:1", 300)  # a renewal
    await store.sessions.release_producer("a", "gw2:1")  # not the holder: nothing happens
    assert not await store.sessions.claim_producer("a", "gw2:1", 300)
    await store.sessions.release_producer("a", "gw1:1")
    assert await store.sessions.producer("a") is None
    assert await store.sessions.claim_producer("a", "gw2:1", 200)
    await asyncio.sleep(0.3)  # gw2 died without releasing: the slot frees itself
    assert await store.sessions.claim_producer("a", "gw3:1", 5000)
    await store.close()


async def test_a_producer_renewal_after_the_delete_leaves_no_slot(make_store):
    """The gateway's renewal task may run just after a DELETE: it must not bring the slot back
    (benchmarks/soak.py found 14 producer keys of deleted sessions left in Redis)."""
    store = make_store()
    await store.sessions.create(record("a"))
    assert await store.sessions.claim_producer("a", "gw1:1", 5000)
    await store.delete_session("a")
    assert await store.sessions.claim_producer("a", "gw1:1", 5000)  # nothing else holds it...
    assert await store.sessions.producer("a") is None  # ...and nothing was kept
    await store.close()


# --- frames and backpressure ----------------------------------------------------------------------


async def test_frame_log_assigns_seq_and_applies_the_backlog_policy(make_store):
    store = make_store()
    await store.sessions.create(record("a"))
    appended = [await store.streams.append("a", frame(i), keep=3) for i in range(5)]
    assert [a.seq for a in appended] == [1, 2, 3, 4, 5]
    assert [a.dropped for a in appended] == [0, 0, 0, 1, 1]
    assert await store.streams.backlog("a") == 3
    assert (await store.sessions.get("a")).next_frame_index == 5  # the grid goes on after frame 4
    assert [f.seq for f in await store.streams.frames_after("a", 0)] == [3, 4, 5]
    got = (await store.streams.frames_after("a", 2, 3))[0]
    assert (got.pts, got.frame_index, got.data, got.height) == (0.4, 2, bytes([2]) * 12, 2)
    await store.sessions.create(record("b"))
    for i in range(3):
        last = await store.streams.append("b", frame(i), keep=1)
    assert last.dropped == 1 and await store.streams.backlog("b") == 1
    assert [f.seq for f in await store.streams.frames_after("b", 0)] == [3]
    await store.close()


async def test_the_same_append_again_is_not_a_second_frame(make_store):
    """A Cluster client resends a script whose reply it lost (a node busy migrating keys): the
    frame is logged once, the resend answered with its seq."""
    store = make_store()
    await store.sessions.create(record("a"))
    first = frame(0)
    resend = dataclasses.replace(first)
    assert (await store.streams.append("a", first, keep=10)).seq == 1
    assert (await store.streams.append("a", resend, keep=10)).seq == 1 and resend.seq == 1
    later = frame(1)
    later.received_at = first.received_at  # another grid index: a new frame, whatever its arrival time
    assert (await store.streams.append("a", later, keep=10)).seq == 2
    assert [f.seq for f in await store.streams.frames_after("a", 0)] == [1, 2]
    assert (await store.sessions.get("a")).frames_received == 2
    assert await store.streams.backlog("a") == 2
    await store.close()


async def test_a_taken_frame_is_never_dropped(make_store):
    store = make_store()
    await with_frames(store, "a", 1, max_backlog=1)
    (lease,) = await store.streams.claim("w1", 10, 5000)
    taken = await store.streams.take_next({"a": (lease, 0)}, timeout=1.0)
    assert taken["a"].seq == 1
    # The worker is busy with frame 1; two more arrive over a backlog of 1: frame 2 goes, not 1.
    await store.streams.append("a", frame(1), keep=1)
    dropped = await store.streams.append("a", frame(2), keep=1)
    assert dropped.dropped == 1
    assert [f.seq for f in await store.streams.frames_after("a", 0)] == [1, 3]
    await store.close()


# --- leases, exactly-once commits, fencing ---------------------------------------------------------


async def test_claim_take_commit_and_duplicates_are_ignored(make_store):
    store = make_store()
    await with_frames(store, "a", 3)
    assert await store.streams.unclaimed() == 1
    (lease,) = await store.streams.claim("w1", 10, 5000)
    assert (lease.session_id, lease.processed_seq, lease.checkpoint) == ("a", 0, None)
    assert await store.streams.claim("w2", 10, 5000) == []  # held: nobody else gets it
    assert await store.streams.unclaimed() == 0
    cursor, seen = 0, []
    for _ in range(3):
        taken = await store.streams.take_next({"a": (lease, cursor)}, timeout=1.0)
        cursor = taken["a"].seq
        seen.append(cursor)
        await store.streams.commit(lease, [result(cursor)], None, 5000)
    assert seen == [1, 2, 3]
    assert await store.streams.take_next({"a": (lease, cursor)}, timeout=0.05) == {}
    await store.streams.commit(lease, [result(2), result(3)], None, 5000)  # a replayed duplicate
    assert [r.seq for r in await store.results.read_after("a", 0)] == [1, 2, 3]
    assert (await store.results.read_after("a", 0))[0].labels == [{"id": 1, "name": "x", "score": 0.5}]
    got = await store.sessions.get("a")
    assert got.frames_processed == 3 and await store.streams.backlog("a") == 0
    await store.close()


async def test_a_stale_worker_cannot_commit_after_a_takeover(make_store):
    store = make_store()
    await with_frames(store, "a", 2)
    (old,) = await store.streams.claim("w1", 10, 200)
    await store.streams.commit(old, [result(1)], None, 200)
    await asyncio.sleep(0.35)  # w1 stalls: its lease runs out
    (new,) = await store.streams.claim("w2", 10, 5000)
    assert new.token > old.token and new.processed_seq == 1
    with pytest.raises(StaleLease):
        await store.streams.commit(old, [result(2)], (2, b"old state"), 5000)
    assert await store.streams.renew([old, new], 5000) == [False, True]
    with pytest.raises(StaleLease):
        await store.streams.release(old, None)
    assert await store.streams.take_next({"a": (old, 1)}, timeout=0.05) == {}  # no frames for a stale lease
    assert [r.seq for r in await store.results.read_after("a", 0)] == [1]  # the stale commit left nothing
    assert await store.streams.checkpoint("a") is None
    await store.streams.commit(new, [result(2)], None, 5000)
    assert [r.seq for r in await store.results.read_after("a", 0)] == [1, 2]
    await store.close()


async def test_checkpoint_trims_the_log_and_a_new_lease_resumes_from_it(make_store):
    store = make_store()
    await with_frames(store, "a", 5)
    (lease,) = await store.streams.claim("w1", 10, 5000)
    for seq in (1, 2, 3):
        await store.streams.commit(lease, [result(seq)], (2, b"state@2") if seq == 2 else None, 5000)
    assert [f.seq for f in await store.streams.frames_after("a", 0)] == [3, 4, 5]
    assert await store.streams.checkpoint("a") == (2, b"state@2")
    await store.streams.release(lease, None)  # frames 4 and 5 wait: claimable at once
    (again,) = await store.streams.claim("w2", 10, 5000)
    assert (again.processed_seq, again.checkpoint_seq, again.checkpoint) == (3, 2, b"state@2")
    replay = await store.streams.frames_after("a", again.checkpoint_seq, again.processed_seq)
    assert [f.seq for f in replay] == [3]
    for seq in (4, 5):  # a checkpoint is a resume point only where the results are committed
        await store.streams.commit(again, [result(seq)], None, 5000)
    await store.streams.release(again, (5, b"state@5"))
    assert await store.streams.checkpoint("a") == (5, b"state@5")
    assert await store.streams.frames_after("a", 0) == []
    await store.close()


async def test_release_without_frames_unlists_and_a_new_frame_lists_again(make_store):
    store = make_store()
    await with_frames(store, "a", 1)
    (lease,) = await store.streams.claim("w1", 10, 5000)
    await store.streams.commit(lease, [result(1)], None, 5000)
    await store.streams.release(lease, None)
    assert await store.streams.claim("w1", 10, 5000) == [] and await store.streams.unclaimed() == 0
    started = time.monotonic()
    waiter = asyncio.create_task(store.streams.wait_work(5.0))
    await asyncio.sleep(0.05)
    await store.streams.append("a", frame(1), keep=5)
    await waiter
    assert time.monotonic() - started < 1.0
    (lease,) = await store.streams.claim("w2", 10, 5000)
    assert lease.processed_seq == 1
    await store.close()


async def test_deleted_session_refuses_commits_and_leaves_nothing(make_store):
    store = make_store()
    await with_frames(store, "a", 2)
    (lease,) = await store.streams.claim("w1", 10, 5000)
    await store.streams.commit(lease, [result(1)], (1, b"s"), 5000)
    assert await store.delete_session("a")
    with pytest.raises(StaleLease):
        await store.streams.commit(lease, [result(2)], None, 5000)
    assert await store.results.read_after("a", 0) == [] and await store.streams.checkpoint("a") is None
    assert await store.streams.frames_after("a", 0) == [] and await store.streams.claim("w1", 10, 5000) == []
    assert await store.sessions.get("a") is None
    await store.close()


async def test_take_next_waits_for_a_frame(make_store):
    store = make_store()
    await with_frames(store, "a", 1)
    (lease,) = await store.streams.claim("w1", 10, 5000)
    cursors = {"a": (lease, 1)}
    waiter = asyncio.create_task(store.streams.take_next(cursors, timeout=5.0))
    await asyncio.sleep(0.05)
    await store.streams.append("a", frame(1), keep=5)
    got = await asyncio.wait_for(waiter, 2.0)
    assert got["a"].seq == 2
    await store.close()


# --- results --------------------------------------------------------------------------------------


async def test_results_read_after_seq_are_capped_and_block(make_store):
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
    await store.close()


def test_lease_is_a_dataclass_with_the_checkpoint():
    lease = Lease("a", "w", 3, 10, 8, b"x")
    assert (lease.token, lease.processed_seq, lease.checkpoint_seq) == (3, 10, 8)


# --- what the append, create and touch do in one step ----------------------------------------------


async def test_append_counts_in_the_record_and_commit_answers_the_backlog(make_store):
    store = make_store()
    await store.sessions.create(record("a"))
    for i in range(5):
        await store.streams.append("a", frame(i), keep=3)
    got = await store.sessions.get("a")
    assert (got.frames_received, got.frames_dropped) == (5, 2)
    [lease] = await store.streams.claim("w1", 5, 5000)
    taken = await store.streams.take_next({"a": (lease, 0)}, timeout=0)
    assert await store.streams.commit(lease, [result(taken["a"].seq)], None, 5000) == 2
    await store.close()


async def test_create_admits_exactly_the_limit_under_concurrency(make_store):
    store = make_store()
    outcomes = await asyncio.gather(*(store.sessions.create(record(f"s{i}"), max_sessions=8) for i in range(30)),
                                    return_exceptions=True)
    assert sum(o is None for o in outcomes) == 8
    assert all(isinstance(o, SessionsFull) for o in outcomes if o is not None)
    assert await store.sessions.count() == 8
    await store.close()


async def test_create_admits_exactly_the_client_quota_and_a_delete_gives_it_back(make_store):
    store = make_store()

    def of(session_id: str, client: str) -> SessionRecord:
        return dataclasses.replace(record(session_id), client=client)

    outcomes = await asyncio.gather(*(store.sessions.create(of(f"a{i}", "addr:10.0.0.1"), max_sessions=100,
                                                            max_per_client=3) for i in range(12)),
                                    return_exceptions=True)
    assert sum(o is None for o in outcomes) == 3
    assert all(isinstance(o, ClientSessionsFull) for o in outcomes if o is not None)
    # Another client, and sessions with no client, are not counted against it.
    await store.sessions.create(of("b0", "key:0123"), max_per_client=3)
    await store.sessions.create(of("n0", ""), max_per_client=3)
    admitted = [f"a{i}" for i, o in enumerate(outcomes) if o is None]
    assert await store.delete_session(admitted[0])  # deleted (or reaped): its place is free again
    await store.sessions.create(of("a-new", "addr:10.0.0.1"), max_per_client=3)
    with pytest.raises(ClientSessionsFull):
        await store.sessions.create(of("a-more", "addr:10.0.0.1"), max_per_client=3)
    assert await store.sessions.count() == 5
    for session_id in [*admitted[1:], "a-new", "b0", "n0"]:
        await store.delete_session(session_id)
    assert await store.sessions.count() == 0
    await store.close()


async def test_client_quota_in_redis_is_a_set_that_empties_and_forgets_expired_records(redis_server):
    redis_server.flush()
    store = redis_store(redis_server.url, results_cap=10)
    client = store.client
    one = dataclasses.replace(record("x1"), client="addr:10.0.0.2")
    await store.sessions.create(one, max_per_client=2)
    await store.sessions.create(dataclasses.replace(one, session_id="x2"), max_per_client=2)
    assert await client.smembers(keys.client_sessions("addr:10.0.0.2")) == {b"x1", b"x2"}
    await client.delete(keys.session("x1"))  # its keys expired with no reaper left: not deleted
    await store.sessions.create(dataclasses.replace(one, session_id="x3"), max_per_client=2)
    assert await client.smembers(keys.client_sessions("addr:10.0.0.2")) == {b"x2", b"x3"}
    for session_id in ("x1", "x2", "x3"):
        await store.delete_session(session_id)
    assert not await client.exists(keys.client_sessions("addr:10.0.0.2"))  # nothing left behind
    await store.close()


async def test_huge_frame_index_stays_an_integer(make_store):
    store = make_store()
    await store.sessions.create(record("a"))
    big = Frame(pts=1e9, frame_index=5 * 10**17, received_at=time.time(), height=2, width=2, data=b"x" * 12)
    await store.streams.append("a", big, keep=3)
    got = await store.sessions.get("a")
    assert got is not None and got.next_frame_index == 5 * 10**17 + 1
    page, _ = await store.sessions.list(None, 10)
    assert [r.session_id for r in page] == ["a"]
    await store.close()


async def test_touch_after_delete_leaves_nothing_to_reap(make_store):
    store = make_store()
    await store.sessions.create(record("a", created_at=100.0, idle=10))
    assert await store.delete_session("a")
    await store.sessions.touch("a", 105.0)
    assert await store.sessions.expired(10**10) == []
    await store.close()


def test_an_unreadable_record_does_not_break_a_listing(redis_server):
    """One bad record (written by hand here) is skipped by a listing and reads as gone."""
    from service.store import keys

    async def scenario():
        server = redis_server
        server.flush()
        store = redis_store(server.url)
        await store.sessions.create(record("good", created_at=1.0))
        await store.sessions.create(record("bad", created_at=2.0))
        await store.client.hset(keys.session("bad"), "next_frame_index", "5e+17")
        page, _ = await store.sessions.list(None, 10)
        assert [r.session_id for r in page] == ["good"]
        assert await store.sessions.get("bad") is None
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("servers", ["redis_server", "redis_cluster", "redis_sentinel"])
def test_a_dead_workers_sessions_are_taken_over_before_the_lease_runs_out(servers, request):
    """The heartbeat names the worker's own Redis connection: held by a live worker, a session
    stays; once that connection is gone (the process died: its sockets closed), another worker
    takes the session over although the lease has a minute to go, and the dead one's commits are
    refused. A missing heartbeat alone (a stalled worker) takes nothing: its lease decides."""
    from service.store import keys

    redis_server = request.getfixturevalue(servers)

    async def scenario():
        redis_server.flush()
        dying, other = redis_store(redis_server.url), redis_store(redis_server.url)
        ready = other.streams.layout.ready("a")  # on a Cluster: one bucket of the ready set
        await dying.sessions.create(record("a"))
        await dying.streams.append("a", frame(0), keep=10)
        await dying.streams.heartbeat("w1", 60_000)
        [lease] = await dying.streams.claim("w1", 5, 60_000)
        await other.client.zadd(ready, {"a": 0})  # due now: a claimer looks at it
        await other.streams.heartbeat("w2", 60_000)
        assert await other.streams.claim("w2", 5, 60_000) == []  # w1 is alive
        await dying.close()  # w1 dies: its connections close
        await other.client.zadd(ready, {"a": 0})
        [taken] = await other.streams.claim("w2", 5, 60_000)
        assert taken.token > lease.token and taken.worker_id == "w2"
        zombie = redis_store(redis_server.url)
        with pytest.raises(StaleLease):
            await zombie.streams.commit(lease, [result(1)], None, 60_000)
        await other.client.delete(keys.worker("w2"))  # no heartbeat at all: not taken for dead
        await other.client.zadd(ready, {"a": 0})
        assert await zombie.streams.claim("w3", 5, 60_000) == []
        await zombie.close()
        await other.close()

    asyncio.run(scenario())


async def test_a_session_that_never_got_a_frame_expires_early(make_store):
    store = make_store()
    unused = record("a", created_at=100.0, idle=60)
    unused.unused_timeout_s = 5.0
    await store.sessions.create(unused)
    await store.sessions.touch("a", 103.0)  # a ping: no frame yet
    assert await store.sessions.expired(106.0) == ["a"]
    await store.streams.append("a", frame(0), keep=5)
    await store.sessions.touch("a", 104.0)  # the first frame: the idle timeout from now on
    assert await store.sessions.expired(106.0) == []
    assert await store.sessions.expired(164.0) == ["a"]
    await store.close()


async def test_events_are_committed_with_their_result_once(make_store):
    store = make_store()
    await with_frames(store, "a", 2)
    [lease] = await store.streams.claim("w1", 5, 5000)
    started = {"type": "event", "phase": "start", "label": "x", "label_id": 1, "start_seq": 1, "start_pts": 0.2}
    first = result(1)
    first.events = [started]
    await store.streams.commit(lease, [first], None, 5000)
    await store.streams.commit(lease, [first], None, 5000)  # a replayed duplicate: ignored
    assert await store.results.events("a") == [started]
    assert (await store.results.read_after("a", 0))[0].events == [started]
    await store.delete_session("a")
    assert await store.results.events("a") == []
    await store.close()


async def test_a_checkpoint_ahead_of_the_committed_progress_is_not_saved(make_store):
    store = make_store()
    await with_frames(store, "a", 3)
    [lease] = await store.streams.claim("w1", 5, 5000)
    await store.streams.commit(lease, [result(1)], None, 5000)
    await store.streams.release(lease, (3, b"ahead"))  # frames 2..3 were fed, never committed
    assert await store.streams.checkpoint("a") is None
    [again] = await store.streams.claim("w2", 5, 5000)
    assert (again.processed_seq, again.checkpoint_seq) == (1, 0)
    await store.close()
