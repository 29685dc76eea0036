"""Worker heartbeats in Redis: who is alive, how loaded, and whose process is gone.

A worker keeps one Redis connection open for its heartbeat and writes that connection's id
(``CLIENT ID``) into ``movinet:worker:<id>`` every eighth of a lease. A claimer that finds a
session held asks the server that connection lives on whether it is still there (``CLIENT LIST
ID``): when the process died, the kernel closed its sockets. On a Redis Cluster the heartbeat's
connection goes to the primary that holds the heartbeat key's slot, and the value names that node,
since connection ids are per server. Where ``CLIENT LIST`` is refused, or the node is not known any
more (a failover), nobody is taken for dead: the leases decide alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from redis.exceptions import RedisError

from service.store import WorkerLoad, keys


def heartbeat_ttl_ms(lease_ttl_ms: int) -> int:
    """A worker's heartbeat key outlives two leases (renewed every eighth of one): it names the
    worker's connection; whether that connection is open says if the worker is alive."""
    return max(400, 2 * lease_ttl_ms)


class Heartbeats:
    def __init__(self, client: Any, clustered: bool) -> None:
        self._r = client
        self._clustered = clustered
        self._beat: Any = None  # single/sentinel: a single-connection client; cluster: a raw Connection
        self._node = ""  # cluster: host:port of the server the heartbeat connection is open to
        self._lock = asyncio.Lock()  # a raw connection serves one command at a time (the loop and its task beat)

    async def _connection_id(self, key: str) -> tuple[int, str]:
        if not self._clustered:
            if self._beat is None:
                self._beat = self._r.client()  # single_connection_client: the same connection every beat
            return int(await self._beat.client_id()), ""
        async with self._lock:
            if self._beat is None:
                await self._r.warm()  # the slot map: empty until the client's first command
                node = self._r.get_node_from_key(key)
                # Our own connection, outside the node's pool: a topology refresh does not close it.
                self._beat = node.connection_class(**node.connection_kwargs)
                self._node = f"{node.host}:{node.port}"
            try:
                await self._beat.send_command("CLIENT", "ID")
                return int(await self._beat.read_response()), self._node
            except (RedisError, OSError):
                beat, self._beat = self._beat, None  # the node went away (a failover): the next beat opens a new one
                await beat.disconnect()
                raise

    async def beat(self, worker_id: str, ttl_ms: int, load: WorkerLoad | None) -> None:
        key = keys.worker(worker_id)
        connection, node = await self._connection_id(key)  # a reconnect gives a new id: written each beat
        value: dict[str, Any] = {**(dataclasses.asdict(load) if load is not None else {}), "connection": connection}
        if node:
            value["node"] = node
        await (self._r if self._clustered else self._beat).set(key, json.dumps(value), px=heartbeat_ttl_ms(ttl_ms))

    async def _mget(self, names: list[str]) -> list[Any]:
        if self._clustered:
            return await self._r.mget_nonatomic(names)
        return await self._r.mget(names)

    async def _connected(self, node: str, wanted: list[int]) -> set[int] | None:
        """Which of the connection ids are open on ``node`` ('' = the one server); None: unknown."""
        options: dict[str, Any] = {}
        if self._clustered:
            host, _, port = node.rpartition(":")
            target = self._r.get_node(host=host, port=int(port)) if port.isdigit() else None
            if target is None:
                return None
            options["target_nodes"] = target
        try:
            listing = await self._r.execute_command("CLIENT", "LIST", "ID", *wanted, **options)
        except RedisError:  # CLIENT LIST refused (some managed services): leases decide alone
            return None
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        return {int(part[3:]) for part in text.split() if part.startswith("id=")}

    async def dead_holders(self, held: dict[str, bytes]) -> dict[str, bytes]:
        """The held sessions whose holder is dead: its heartbeat names the Redis connection it
        keeps open, and that connection is gone. A slow or stopped worker keeps its connection,
        so it is never taken for dead here; its sessions move when their leases run out."""
        holders = {sid: value.decode().rsplit(" ", 1)[0] for sid, value in held.items()}
        beats = await self._mget([keys.worker(h) for h in holders.values()])
        connections: dict[str, tuple[str, int]] = {}
        for sid, beat in zip(holders, beats, strict=True):
            try:
                value = json.loads(beat) if beat else {}
                connections[sid] = (str(value.get("node", "")), int(value["connection"]) if value else -1)
            except (ValueError, KeyError, TypeError):
                continue  # a heartbeat without a connection id: only its lease tells
        by_node: dict[str, list[int]] = {}
        for node, connection in connections.values():
            if connection >= 0:
                by_node.setdefault(node, []).append(connection)
        dead: dict[str, bytes] = {}
        for node, wanted in by_node.items():
            connected = await self._connected(node, sorted(set(wanted)))
            if connected is None:
                continue
            dead.update({sid: held[sid] for sid, (n, c) in connections.items()
                         if n == node and c >= 0 and c not in connected})
        return dead

    async def pool_load(self) -> list[WorkerLoad]:
        names = [key async for key in self._r.scan_iter(match=keys.worker("*"), count=1000)]
        found: list[WorkerLoad] = []
        for raw in await self._mget(names) if names else []:
            try:
                beat = json.loads(raw)
                beat.pop("connection", None)
                beat.pop("node", None)
                found.append(WorkerLoad(**beat))
            except (TypeError, ValueError, AttributeError):
                continue  # gone meanwhile, or a worker that publishes no load
        return found

    async def close(self) -> None:
        beat, self._beat = self._beat, None
        if beat is None:
            return
        if self._clustered:
            await beat.disconnect()
        else:
            await beat.aclose()
