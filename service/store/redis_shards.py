"""Where the global indexes live, and how commands over many sessions are sent.

On one Redis (or a Sentinel's primary) the ``ready`` and ``expiry`` zsets are one key each and the
scripts that change a session change its listing in the same step, as they always did. On a
Redis Cluster a script may only touch keys of one slot, so:

* each index is split into ``buckets`` zsets, each with its own hash tag
  (``movinet:ready:{r007}``), spread over the shards; a session's bucket is a hash of its id;
* a session script changes only the session's keys, and its listing is written by a second call
  right after it (the ready hint after the frame is logged: a claimer that unlists a session
  checks its backlog after unlisting, so the two orders of events both end listed);
* claimers and the reaper read every bucket (one pipeline: one round trip per shard) and treat
  what they find as hints: a session listed but idle is unlisted, one that is gone is dropped.

The session index (``movinet:sessions``, by creation: listing and the session limit) stays one
key: it is written on create and delete only, never on the frame path.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import ClusterPipeline
from redis.exceptions import NoScriptError

from service.store import keys

Call = Callable[[Any], Any]  # one command or script call, given the client (or pipeline) to use


def script_call(script: Any, keys: list[str], args: list[Any]) -> Call:
    """A Lua script as a :data:`Call`. In a Cluster pipeline it is queued as a bare ``EVALSHA``:
    awaiting a Cluster pipeline (what the script object does) empties its queue."""
    def call(client: Any) -> Any:
        if isinstance(client, ClusterPipeline):
            return client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # evalsha() is blocked there
        return script(keys=keys, args=args, client=client)
    return call


class Layout:
    def __init__(self, client: Any, clustered: bool, buckets: int = 1) -> None:
        self._r = client
        self.clustered = clustered
        self.buckets = max(1, buckets)
        if self.buckets == 1:
            self.ready_keys, self.expiry_keys = [keys.READY], [keys.EXPIRY]
        else:
            self.ready_keys = [keys.ready_bucket(b) for b in range(self.buckets)]
            self.expiry_keys = [keys.expiry_bucket(b) for b in range(self.buckets)]

    @property
    def split(self) -> bool:
        """Whether listings are written apart from the session's scripts (a Cluster)."""
        return self.clustered

    def bucket(self, session_id: str) -> int:
        return zlib.crc32(session_id.encode()) % self.buckets if self.buckets > 1 else 0

    def ready(self, session_id: str) -> str:
        return self.ready_keys[self.bucket(session_id)]

    def expiry(self, session_id: str) -> str:
        return self.expiry_keys[self.bucket(session_id)]

    async def pipelined(self, calls: list[Call]) -> list[Any]:
        """Run the calls in one pipeline (non-transactional; on a Cluster one per shard, in parallel).

        A Cluster pipeline does not load scripts: a primary that has never seen one (new after a
        failover or a reshard) answers NOSCRIPT, and those calls are run again alone (the script
        object loads itself)."""
        if not calls:
            return []
        if self.clustered:
            await self._r.warm()  # see service.store.redis_url: the first command runs alone
        async with self._r.pipeline(transaction=False) as pipe:
            for call in calls:
                queued = call(pipe)
                if inspect.iscoroutine(queued):  # a script on a plain pipeline: it registers itself
                    await queued
            replies = await pipe.execute(raise_on_error=not self.clustered)
        if self.clustered:
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    replies[i] = await calls[i](self._r)
                elif isinstance(reply, Exception):
                    raise reply
        return replies

    async def each(self, names: list[str], command: str, *args: Any, **options: Any) -> list[Any]:
        """``command`` on each key of an index (one pipeline), the replies in the keys' order."""
        return await self.pipelined([lambda c, n=n: getattr(c, command)(n, *args, **options) for n in names])

    async def due(self, names: list[str], upto: float, limit: int) -> list[tuple[bytes, float]]:
        """Members of the index's buckets scored up to ``upto``, lowest first, at most ``limit``."""
        if len(names) == 1:
            return await self._r.zrangebyscore(names[0], "-inf", upto, start=0, num=limit, withscores=True)
        found = [item for reply in await self.each(names, "zrangebyscore", "-inf", upto, start=0, num=limit,
                                                   withscores=True) for item in reply]
        return sorted(found, key=lambda item: item[1])[:limit]

    async def count_due(self, names: list[str], upto: float) -> int:
        if len(names) == 1:
            return int(await self._r.zcount(names[0], "-inf", upto))
        return sum(int(n) for n in await self.each(names, "zcount", "-inf", upto))
