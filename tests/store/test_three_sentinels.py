"""Three Sentinels (quorum 2) over a primary and its replica: the primary's node dies (its Redis
and its Sentinel SIGKILLed), the two other Sentinels agree and promote the replica. What was
replicated before the crash is all there; what the primary had acknowledged but not yet sent to
its replica is lost: here, by construction, the last frames appended and a commit (asynchronous
replication; docs/deploy.md says what clients see then)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from service.store import STORE_ERRORS, keys
from service.store.redis import redis_store
from tests.needs import require
from tests.redis_cluster import SentinelServers, cli, tools_missing
from tests.store.test_contract import frame, record, result

pytestmark = pytest.mark.slow


def test_three_sentinels_fail_over_without_the_primarys_node_and_lose_only_the_unreplicated(tmp_path):
    require(tools_missing())  # skipped without redis-server/redis-cli; a failure under CI=1
    servers = SentinelServers(tmp_path, sentinels=3, quorum=2).start()

    async def scenario() -> dict:
        store = redis_store(servers.url, results_cap=100)
        await store.sessions.create(record("a"))
        for i in range(4):
            await store.streams.append("a", frame(i), keep=100)
        [lease] = await store.streams.claim("w1", 5, 60_000)
        await store.streams.commit(lease, [result(1), result(2)], (2, b"state@2"), 60_000)
        assert cli(servers.primary.port, "wait", "1", "2000").strip() == "1"  # replicated: seqs 1-4, commit
        # Cut replication: the replica is stopped (it cannot reconnect) while the primary drops its
        # link, then acknowledges two more frames and a commit that no replica gets.
        os.kill(servers.replica.process.pid, signal.SIGSTOP)
        cli(servers.primary.port, "client", "kill", "type", "replica")
        unreplicated = [(await store.streams.append("a", frame(i), keep=100)).seq for i in range(4, 6)]
        await store.streams.commit(lease, [result(3)], None, 60_000)
        servers.primary.kill()  # the node dies: its Redis and its Sentinel
        servers.kill_sentinel(0)
        killed, errors = time.monotonic(), 0
        os.kill(servers.replica.process.pid, signal.SIGCONT)  # back, with no primary to catch up from
        while True:  # what a gateway does: its appends fail until the replica is promoted
            try:
                appended = await store.streams.append("a", frame(6), keep=100)
                break
            except STORE_ERRORS:
                errors += 1
                assert time.monotonic() - killed < 60, "no failover within 60 s"
                await asyncio.sleep(0.2)
        took = time.monotonic() - killed
        out = {"unreplicated": unreplicated, "appended": appended.seq, "took": took, "errors": errors,
               "checkpoint": await store.streams.checkpoint("a"),
               "results": [r.seq for r in await store.results.read_after("a", 0)],
               "record": await store.sessions.get("a"),
               "logged": [f.seq for f in await store.streams.frames_after("a", 0)]}
        # The lease and its fence were replicated: the same worker commits the lost result again.
        await store.streams.commit(lease, [result(3)], None, 60_000)
        out["results_after"] = [r.seq for r in await store.results.read_after("a", 0)]
        out["fence"] = int(await store.client.hget(keys.session("a"), "fence"))
        await store.close()
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        promoted = cli(servers.replica.port, "info", "replication")
        servers.stop()
    assert "role:master" in promoted
    assert out["unreplicated"] == [5, 6]
    # Lost: the two frames (their seqs are given again, to the next frames) and the commit of seq 3.
    assert out["appended"] == 5
    assert out["logged"] == [3, 4, 5]  # trimmed up to the checkpoint (2); 5 is the new frame
    assert out["results"] == [1, 2]
    assert (out["record"].frames_received, out["record"].frames_processed) == (5, 2)
    # Kept: everything replicated before (seqs, checkpoint, results, the lease and its fence).
    assert out["checkpoint"] == (2, b"state@2")
    assert out["results_after"] == [1, 2, 3] and out["fence"] == 1
    print(f"three sentinels: appends refused for {out['took']:.1f} s ({out['errors']} tries) with the primary's "
          f"node gone; lost: frames {out['unreplicated']} and the commit of seq 3 (never replicated)")
