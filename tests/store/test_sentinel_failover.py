"""A Sentinel-managed primary SIGKILLed: the store finds the promoted replica by itself and the
session goes on where the replica had it (what was replicated before the crash)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.store import STORE_ERRORS
from service.store.redis import redis_store
from tests.needs import require
from tests.redis_cluster import SentinelServers, cli, tools_missing
from tests.store.test_contract import frame, record, result

pytestmark = pytest.mark.slow


def test_the_store_follows_a_sentinel_failover(tmp_path):
    require(tools_missing())  # skipped without redis-server/redis-cli; a failure under CI=1
    servers = SentinelServers(tmp_path).start()

    async def scenario() -> tuple[list[int], float, int]:
        store = redis_store(servers.url, results_cap=100)
        await store.sessions.create(record("a"))
        for i in range(3):
            await store.streams.append("a", frame(i), keep=100)
        [lease] = await store.streams.claim("w1", 5, 60_000)
        await store.streams.commit(lease, [result(1)], (1, b"state@1"), 60_000)
        # Replicated before the crash (10 s: a loaded machine acked late, and an empty replica was promoted).
        assert cli(servers.primary.port, "wait", "1", "10000").strip() == "1"
        servers.primary.kill()
        killed, errors = time.monotonic(), 0
        while True:  # what a gateway does: its appends fail until the replica is promoted
            try:
                appended = await store.streams.append("a", frame(3), keep=100)
                break
            except STORE_ERRORS:
                errors += 1
                assert time.monotonic() - killed < 30, "no failover within 30 s"
                await asyncio.sleep(0.2)
        took = time.monotonic() - killed
        # The promoted replica had everything: the seq goes on, the lease, checkpoint and result are there.
        assert appended.seq == 4
        assert await store.streams.checkpoint("a") == (1, b"state@1")
        await store.streams.commit(lease, [result(2)], None, 60_000)  # the same fence still holds
        seqs = [r.seq for r in await store.results.read_after("a", 0)]
        await store.close()
        return seqs, took, errors

    try:
        seqs, took, errors = asyncio.run(scenario())
        assert seqs == [1, 2]
        assert "role:master" in cli(servers.replica.port, "info", "replication")
        print(f"sentinel failover: appends refused for {took:.1f} s ({errors} tries), then on the new primary")
    finally:
        servers.stop()
