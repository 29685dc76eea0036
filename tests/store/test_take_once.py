"""A worker waiting for frames gets each one from Redis once: the frame its XREAD wait brings is
marked taken as it is (TAKE_SEEN), not read again by TAKE (counted in Redis' own output bytes)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.store import Frame, keys
from service.store.redis import redis_store
from tests.store.test_contract import record

pytestmark = pytest.mark.anyio

FRAME_BYTES = 60_000


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def output_bytes(store) -> int:
    return int((await store.client.info("stats"))["total_net_output_bytes"])


@pytest.mark.parametrize("server", ["redis_server", "redis_cluster"])
async def test_a_frame_that_ends_a_wait_is_read_once_and_marked_taken(server, request):
    servers = request.getfixturevalue(server)
    servers.flush()
    store, gateway = redis_store(servers.url), redis_store(servers.url)
    await store.sessions.create(record("a"))
    await gateway.streams.append("a", Frame(pts=0.0, frame_index=0, received_at=time.time(), height=100, width=200,
                                            data=b"\x01" * FRAME_BYTES), keep=10)
    [lease] = await store.streams.claim("w", 1, 60_000)
    assert (await store.streams.take_next({"a": (lease, 0)}, 0))["a"].seq == 1
    direct = redis_store(servers.url) if server == "redis_server" else None

    async def append_soon() -> None:
        await asyncio.sleep(0.3)
        await gateway.streams.append("a", Frame(pts=0.2, frame_index=1, received_at=time.time(), height=100,
                                                width=200, data=b"\x02" * FRAME_BYTES), keep=10)

    before = await output_bytes(direct) if direct else 0
    appender = asyncio.create_task(append_soon())
    taken = await store.streams.take_next({"a": (lease, 1)}, 5.0)
    await appender
    assert taken["a"].seq == 2 and taken["a"].data == b"\x02" * FRAME_BYTES
    assert int(await store.client.hget(keys.session("a"), "taken_seq")) == 2
    if direct:  # one Redis: what it sent meanwhile is the frame once (and small replies)
        sent = await output_bytes(direct) - before
        assert FRAME_BYTES < sent < 1.5 * FRAME_BYTES, sent
        await direct.close()
    await store.close()
    await gateway.close()
