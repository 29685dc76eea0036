"""The Redis store's connection pool carries a gateway's blocked reads: one per live session."""

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
