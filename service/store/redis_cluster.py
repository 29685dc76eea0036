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
* **A connection closed under a command is a lost connection.** redis-py closes every connection
  of the client (on every fifth MOVED, a slot it finds uncovered, a failed refresh of its map), also
  those other tasks are about to write on. Such a write raises ``RuntimeError`` under uvloop (the
  transport is closed) or ``AttributeError`` (the writer is gone), which redis-py does not retry: a frame's append was lost without a word, a
  producer's socket closed with 1011. It is raised as redis-py's ``ConnectionError``, which
  redis-py retries; the write never left, so the command is sent once.
* **No refresh every fifth MOVED** (``reinitialize_steps=0``): a MOVED patches the slot it names,
  which is what a reshard needs, instead of closing every connection of the client each fifth
  time. A lost connection and a failover still refresh the whole map.
* **A failed refresh of the map is tried again** (``initialize``). redis-py refreshes it after a
  lost connection, outside its own retry loop: one refresh that found no node answering in time
  (nodes busy migrating keys, a primary being replaced) raised ``RedisClusterException`` straight
  to the caller, a frame's append or a worker's commit. It is tried again for ~1.5 s, as TRYAGAIN is.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import weakref
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

__all__ = ["MovinetCluster"]

# Tasks that sent ASKING to a node and have not sent it the command yet (the command follows at
# once, in the same task: redis-py's redirection loop).
_asking: weakref.WeakKeyDictionary[asyncio.Task, ClusterNode] = weakref.WeakKeyDictionary()
# A write on a connection another task closed: uvloop's closed transport, or the writer already
# let go (redis-py sets it to None as it disconnects). Raised before anything is sent.
_WRITE_ON_CLOSED = re.compile(r"the handler is closed|'NoneType' object has no attribute '(writelines|write|drain)'")
# Pauses between tries of a failed topology refresh (~1.5 s in all, then its error is raised).
REFRESH_RETRY_S = (0.05, 0.1, 0.2, 0.4, 0.8)
REFRESH_WINDOW_S = 3.0
_plain_execute = getattr(ClusterNode.execute_command, "movinet_plain", ClusterNode.execute_command)


async def _execute(self: ClusterNode, *args: Any, asking: bool = False, **kwargs: Any) -> Any:
    try:
        return await _execute_on(self, *args, asking=asking, **kwargs)
    except (RuntimeError, AttributeError) as exc:
        if not _WRITE_ON_CLOSED.search(str(exc)):  # only a write that failed: then it never left
            raise
        # Another task closed the node's connections (a topology refresh does) while this one
        # wrote: a lost connection, which redis-py retries, not a fault of the caller's.
        raise RedisConnectionError(f"the connection to {self.name} was closed under the command") from exc


async def _execute_on(self: ClusterNode, *args: Any, asking: bool = False, **kwargs: Any) -> Any:
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("reinitialize_steps", 0)  # see the module docstring
        super().__init__(*args, **kwargs)

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

    async def initialize(self, *args: Any, **kwargs: Any) -> RedisCluster:
        # Tried again only within REFRESH_WINDOW_S of this call (waiting for another task's refresh
        # included): many tasks behind a dead cluster give up as one would, not six times each.
        started = time.monotonic()
        for pause in REFRESH_RETRY_S:
            try:
                return await super().initialize(*args, **kwargs)
            except RedisClusterException:  # no node answered in time, slots uncovered: a moment later
                if time.monotonic() - started > REFRESH_WINDOW_S:
                    raise
                await asyncio.sleep(pause)
        return await super().initialize(*args, **kwargs)

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
