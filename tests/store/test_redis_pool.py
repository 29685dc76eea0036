"""The Redis store: its connection pool carries a gateway's blocked reads (one per live session),
and every key a script creates expires with its session."""

from __future__ import annotations

import asyncio
import time

from service.options import SessionOptions
from service.store import SessionRecord
from service.store.redis import redis_store


def test_150_sessions_waiting_for_results_at_once_get_their_answer(redis_server):
    """Each socket's pump waits in a blocking XREAD that holds a connection; redis-py 8 caps a pool
    at 100 by default, which 100 live sessions in benchmarks/soak.py ran out of."""
    redis_server.flush()

    async def scenario() -> list:
        store = redis_store(redis_server.url)
        now = time.time()
        ids = [f"s{i}" for i in range(150)]
        for session_id in ids:
            await store.sessions.create(SessionRecord(session_id=session_id, token_hash="h", model="m", weights="w",
                                                      options=SessionOptions(), created_at=now, idle_timeout_s=60,
                                                      last_active_at=now))
        try:
            return await asyncio.gather(*(store.results.read_after(s, 0, timeout=1.0) for s in ids))
        finally:
            for session_id in ids:
                await store.delete_session(session_id)
            await store.close()

    assert asyncio.run(scenario()) == [[]] * 150


def test_keys_a_commit_or_release_creates_expire_with_the_session(redis_server):
    """The first result, event and checkpoint of a session have the record's TTL at once (before,
    they had none until the gateway's next touch: a gateway gone meanwhile left them for ever)."""
    from service.store import Frame, Result, keys

    redis_server.flush()

    async def scenario() -> dict[str, int]:
        store = redis_store(redis_server.url)
        now = time.time()
        await store.sessions.create(SessionRecord(session_id="a", token_hash="h", model="m", weights="w",
                                                  options=SessionOptions(), created_at=now, idle_timeout_s=60,
                                                  last_active_at=now))
        for i in range(2):
            await store.streams.append("a", Frame(pts=i / 5, frame_index=i, received_at=now, height=2, width=2,
                                                  data=b"x" * 12), keep=10)
        [lease] = await store.streams.claim("w1", 1, 5000)
        taken = await store.streams.take_next({"a": (lease, 0)}, timeout=0)
        result = Result(seq=taken["a"].seq, pts=0.0, frame_index=0, labels=[], lag_ms=1.0, dropped=0,
                        produced_at=now, events=[{"phase": "start", "label": "x"}])
        await store.streams.commit(lease, [result], (taken["a"].seq, b"state"), 5000)
        ttls = {name: await store.client.pttl(key) for name, key in
                [("session", keys.session("a")), ("results", keys.results("a")), ("events", keys.events("a")),
                 ("checkpoint", keys.checkpoint("a"))]}
        await store.client.delete(keys.checkpoint("a"))
        await store.streams.release(lease, (taken["a"].seq, b"state"))  # the release recreates it
        ttls["checkpoint after release"] = await store.client.pttl(keys.checkpoint("a"))
        await store.delete_session("a")
        await store.close()
        return ttls

    ttls = asyncio.run(scenario())
    assert all(ttl > 0 for ttl in ttls.values()), ttls
