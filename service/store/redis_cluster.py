"""The Redis Cluster client: redis-py's ``RedisCluster`` with what a resharding under load needs.

Found on a real six-node cluster migrating the slots of streaming sessions (tests/pool/test_cluster.py):

* **ASK on one connection.** redis-py (8.1) follows an ASK redirection by sending ``ASKING`` and
  then the command, each on a connection taken from the node's pool, oldest free first. With more
  than one free connection the command goes out on another connection than the ``ASKING``, the
  importing node answers MOVED back to the old owner, which answers ASK again, until ``TTL
  exhausted``: every command on a slot whose keys have all moved but which is not handed over yet.
  Here ``ASKING`` is held back and written together with the command, on its connection.
* **XREAD routed here.** ``XREAD`` has "movable keys", so redis-py asks one node (``COMMAND
  GETKEYS``) where its keys are before every call: a round trip per read, and during a reshard on a
  connection the client had closed meanwhile (``Connection closed by server``). The keys follow
  ``STREAMS``; the slot is computed from them.
* **The first command alone** (``warm``): many concurrent first commands (a gateway's sockets at
  startup) raced in redis-py's topology discovery and failed or were sent twice.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster

__all__ = ["MovinetCluster"]

# Tasks that sent ASKING to a node and have not sent it the command yet (the command follows at
# once, in the same task: redis-py's redirection loop).
_asking: weakref.WeakKeyDictionary[asyncio.Task, ClusterNode] = weakref.WeakKeyDictionary()
_plain_execute = getattr(ClusterNode.execute_command, "movinet_plain", ClusterNode.execute_command)


async def _execute(self: ClusterNode, *args: Any, asking: bool = False, **kwargs: Any) -> Any:
    task = asyncio.current_task()
    if len(args) == 1 and str(args[0]).upper() == "ASKING" and task is not None:
        _asking[task] = self
        return b"OK"
    if task is None or _asking.pop(task, None) is not self or asking:
        return await _plain_execute(self, *args, asking=asking, **kwargs)
    connection = self.acquire_connection()
    try:
        await self.disconnect_if_needed(connection)
        await connection.send_packed_command(connection.pack_commands([("ASKING",), args]))
        try:
            await self.parse_response(connection, "ASKING")
        except BaseException:
            await connection.disconnect()  # the command's reply is still unread on it
            raise
        return await self.parse_response(connection, args[0], **kwargs)
    finally:
        try:
            await self.disconnect_if_needed(connection)
        finally:
            self.release(connection)


def _patch() -> None:
    """Install :func:`_execute` on redis-py's ``ClusterNode`` (once; pyproject pins the redis-py
    whose ``execute_command(*args, asking=False)``, ``acquire_connection``, ``disconnect_if_needed``
    and ``release`` it builds on)."""
    if getattr(ClusterNode.execute_command, "movinet_plain", None) is not None:
        return
    if "asking" not in inspect.signature(_plain_execute).parameters or not all(
            hasattr(ClusterNode, name) for name in ("acquire_connection", "disconnect_if_needed", "release")):
        raise ImportError("service.store.redis_cluster needs redis-py 8.1 (see pyproject.toml)")
    _execute.movinet_plain = _plain_execute  # type: ignore[attr-defined]
    ClusterNode.execute_command = _execute  # type: ignore[method-assign]


_patch()


def _xread_keys(args: tuple[Any, ...]) -> list[Any] | None:
    """The stream keys of ``XREAD [COUNT n] [BLOCK ms] STREAMS key ... id ...`` (without the verb)."""
    for i, arg in enumerate(args):
        if (arg.decode() if isinstance(arg, bytes) else str(arg)).upper() == "STREAMS":
            rest = args[i + 1:]
            return list(rest[: len(rest) // 2]) if rest and len(rest) % 2 == 0 else None
    return None


class MovinetCluster(RedisCluster):
    _warm_lock: asyncio.Lock | None = None
    _warmed = False
    # Redirections and TRYAGAIN retries a command may take (TRYAGAIN: 50 ms apart in the second
    # half): ~2 s, for a slot whose keys are half migrated (a session's keys moving in a reshard),
    # instead of redis-py's 16 (~0.4 s), after which a frame or a commit would fail.
    RedisClusterRequestTTL = 80

    async def warm(self) -> None:
        if self._warmed:
            return
        if self._warm_lock is None:
            self._warm_lock = asyncio.Lock()
        async with self._warm_lock:
            if not self._warmed:
                await self.initialize()
                await super().execute_command("PING")
                self._warmed = True

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self._warmed:
            await self.warm()
        return await super().execute_command(*args, **kwargs)

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if str(command).upper() == "XREAD" and (names := _xread_keys(args)):
            slots = {self.keyslot(name) for name in names}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)
