"""The Cluster client (service.store.redis_cluster) on a real six-node cluster, a slot migrated
under it: commands in the slot's ASK phase succeed however many connections the client holds,
and XREAD is routed without asking a node where its keys are."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from service.store.redis_url import connect, parse_redis_url
from tests.needs import require
from tests.redis_cluster import RedisClusterServers, cli, tools_missing

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    require(tools_missing())  # skipped without redis-server/redis-cli; a failure under CI=1
    servers = RedisClusterServers(tmp_path / "cluster").start()
    yield servers
    servers.stop()


def test_commands_in_a_slots_ask_phase_succeed_on_a_client_with_many_connections(cluster):
    """ASKING and the command on one connection: redis-py sent them on two (oldest free first), the
    importing node answered MOVED, the old owner ASK again, until 'TTL exhausted'."""
    key = "{s_ask}:frames"
    slot = key_slot(key.encode())
    source = cluster.owner_of(slot)
    target = next(port for port in cluster.primaries() if port != source)

    async def main() -> tuple[list, list]:
        client = connect(parse_redis_url(cluster.url))
        await client.xadd(key, {"data": b"frame"}, id="1-0")
        await asyncio.gather(*(client.xlen(key) for _ in range(16)))  # many free connections to the owner
        await asyncio.to_thread(cluster.migrate_keys, slot, source, target)
        try:
            await asyncio.gather(*(client.xlen(key) for _ in range(16)), return_exceptions=True)  # and the target
            lengths = await asyncio.gather(*(client.xlen(key) for _ in range(64)), return_exceptions=True)
            appended = [await client.xadd(key, {"data": b"frame"}, id=f"{seq}-0") for seq in range(2, 12)]
        finally:
            await asyncio.to_thread(cluster.hand_over, slot, target)
        await client.aclose()
        return lengths, appended

    lengths, appended = asyncio.run(main())
    assert lengths == [1] * 64
    assert appended == [f"{seq}-0".encode() for seq in range(2, 12)]
    assert cluster.owner_of(slot) == target
    assert cli(target, "xlen", key).strip() == "11"


def test_the_asking_fix_is_installed_on_redis_pys_cluster_node():
    from redis.asyncio.cluster import ClusterNode

    from service.store import redis_cluster

    assert ClusterNode.execute_command is redis_cluster._execute
    redis_cluster._patch()  # again: still one layer, no recursion
    assert ClusterNode.execute_command.movinet_plain is redis_cluster._plain_execute is not redis_cluster._execute


def _getkeys_calls(cluster: RedisClusterServers) -> int:
    total = 0
    for node in cluster.alive():
        for line in cli(node.port, "info", "commandstats").splitlines():
            if line.startswith("cmdstat_command|getkeys:"):
                total += int(line.split("calls=")[1].split(",")[0])
    return total


def test_xread_is_routed_by_its_keys_without_a_command_getkeys_round_trip(cluster):
    async def main() -> list:
        client = connect(parse_redis_url(cluster.url))
        await client.xadd("{s_read}:results", {"r": b"1"}, id="1-0")
        before = _getkeys_calls(cluster)
        replies = [await client.xread({"{s_read}:results": "0-0"}, count=10) for _ in range(20)]
        replies.append(await client.xread({"{s_read}:results": "1-0"}, count=10, block=50))  # nothing new: times out
        await client.aclose()
        assert _getkeys_calls(cluster) == before
        return replies

    replies = asyncio.run(main())
    assert all(reply == [[b"{s_read}:results", [(b"1-0", {b"r": b"1"})]]] for reply in replies[:20]), replies[0]
    assert replies[20] == []
