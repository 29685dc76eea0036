"""The Redis implementation of the store protocols: gateways and workers share nothing else.

This module holds the stream logs (frames, leases, checkpoints, the ready set, heartbeats), the
result logs and :func:`redis_store`; session records are :mod:`service.store.redis_sessions`, the
byte layout of hashes and stream entries :mod:`service.store.redis_codec`, and the atomic steps
the Lua scripts of :mod:`service.store.redis_scripts`.

Per session (all keys share the hash tag ``{<session_id>}``, see :mod:`service.store.keys`):

* ``session``: a hash with the :class:`SessionRecord` fields plus the progress counters
  ``last_seq`` (the last seq given to a frame), ``processed_seq`` (results committed up to here),
  ``pending`` (the logged frames after it: the backlog, counted by the scripts without reading the
  frames), ``fence`` (the last fencing token handed out) and ``last_append`` (grid index and
  arrival time of the last frame appended: a resend of it is not logged again);
* ``frames``: a stream whose entry id is ``<seq>-0``; frames stay until a checkpoint covers them;
* ``results``: a stream with entry id ``<seq>-0``, capped at ``results_cap`` entries;
* ``checkpoint``: a hash ``seq``, ``data`` (the state bytes), ``token`` (who wrote it);
* ``lease``: a string ``"<worker> <token>"`` with a TTL.

Global: ``movinet:sessions`` (zset by creation: listing), ``movinet:expiry`` (zset by idle
deadline: the reaper) and ``movinet:ready`` (zset of sessions that may need a worker, scored by
the time from which a worker should look at them: a held session's score is its lease's end,
so when a worker dies its sessions become due by themselves).

Every change to a session's keys that must be atomic is one Lua script over that session's keys
(and, on one Redis, for create, touch and append, the global zset that lists it). On a Redis
Cluster (``redis+cluster://``) the global zsets are split into buckets that spread over the
shards and are written in a second call (:mod:`service.store.redis_shards`), pipelines are split
per shard by the cluster client, and a worker waits on its sessions' frame streams with one
``XREAD`` per slot (:meth:`RedisStreamLog.take_next`). The ready set is a hint: every race on it
ends with the session listed (see :meth:`RedisStreamLog._settle`).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from service.store import (
    Appended,
    Frame,
    Lease,
    Result,
    StaleLease,
    Store,
    WorkerLoad,
    keys,
)
from service.store.frame_codec import CODECS, encode_frame
from service.store.redis_codec import frame_from_entry, result_from_entry, result_payload
from service.store.redis_scripts import Scripts
from service.store.redis_sessions import RedisSessionStore
from service.store.redis_shards import Layout, script_call
from service.store.redis_url import connect, parse_redis_url
from service.store.redis_workers import Heartbeats, heartbeat_ttl_ms

__all__ = ["RedisResultLog", "RedisStore", "RedisStreamLog", "heartbeat_ttl_ms", "redis_store"]

EVENTS_CAP = 500  # events kept per session (approximately: MAXLEN ~)
MAX_SLOT_WAITS = 32  # a Cluster worker blocks on at most this many slots at once (the rest: next tick)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _look_again_ms(lease_ttl_ms: int) -> int:
    """When a held session is due again in the ready set: half a lease after its last renewal
    (renewals, every quarter lease, push it on while the holder lives), so a dead holder is
    noticed within half a lease."""
    return max(100, lease_ttl_ms // 2)


class RedisStreamLog:
    def __init__(self, client: aioredis.Redis, scripts: Scripts, results_cap: int, layout: Layout | None = None,
                 frame_codec: str = "raw", frame_quality: int = 90) -> None:
        self._r = client
        self._s = scripts
        self._cap = results_cap
        self._codec, self._quality = frame_codec, frame_quality  # how appended frames are logged
        self._l = layout or Layout(client, clustered=False)
        self.heartbeats = Heartbeats(client, self._l.clustered)
        self._waits: set[asyncio.Task] = set()  # a Cluster's per-slot XREADs still running (see take_next)

    @property
    def layout(self) -> Layout:
        return self._l

    async def append(self, session_id: str, frame: Frame, *, keep: int) -> Appended:
        if self._codec != "raw" and frame.codec == "raw":  # off the event loop (Pillow releases the GIL)
            frame.data = await asyncio.to_thread(encode_frame, frame.data, frame.height, frame.width, self._codec,
                                                 self._quality)
            frame.codec = self._codec
        ready = self._l.ready(session_id)
        now = _now_ms()
        seq, dropped = await self._s.append(
            keys=[keys.session(session_id), keys.frames(session_id)] + ([] if self._l.split else [ready]),
            args=[keep, "" if frame.pts is None else repr(frame.pts), frame.frame_index, repr(frame.received_at),
                  frame.height, frame.width, frame.data, str(int(frame.frame_index) + 1), session_id, now,
                  "" if frame.codec == "raw" else frame.codec])
        if seq < 0:
            raise KeyError(f"session {session_id} is gone")
        frame.seq = int(seq)
        if self._l.split:  # after the frame: a claimer that unlisted it meanwhile checks the backlog after
            try:
                await self._r.zadd(ready, {session_id: now}, nx=True)
            except (RedisError, OSError):
                pass  # the frame is logged (not an error for the sender); the next frame lists the session
        return Appended(seq=int(seq), dropped=int(dropped))

    async def backlog(self, session_id: str) -> int:
        return int(await self._s.backlog(keys=[keys.session(session_id), keys.frames(session_id)]))

    async def checkpoint(self, session_id: str) -> tuple[int, bytes] | None:
        seq, data = await self._r.hmget(keys.checkpoint(session_id), ["seq", "data"])
        return (int(seq), bytes(data)) if seq is not None else None

    async def delete(self, session_id: str) -> None:
        await self._r.delete(keys.frames(session_id), keys.checkpoint(session_id), keys.lease(session_id))

    @staticmethod
    def _owner(lease: Lease) -> str:
        return f"{lease.worker_id} {lease.token}"

    async def _settle(self, session_id: str) -> None:
        """Unlist a session nobody needs to look at; list it again if a frame came meanwhile."""
        ready = self._l.ready(session_id)
        await self._r.zrem(ready, session_id)
        if await self._s.backlog(keys=[keys.session(session_id), keys.frames(session_id)]):
            await self._r.zadd(ready, {session_id: _now_ms()}, nx=True)

    async def claim(self, worker_id: str, limit: int, ttl_ms: int) -> list[Lease]:
        if limit <= 0:
            return []
        now = _now_ms()
        due = [member for member, _ in await self._l.due(self._l.ready_keys, now, limit * 2)]
        leases: list[Lease] = []
        held: dict[str, bytes] = {}  # session -> its holder's lease value
        for member in due:
            if len(leases) >= limit:
                break
            session_id = member.decode()
            lease = await self._claim_one(session_id, worker_id, ttl_ms, now, held)
            if lease is not None:
                leases.append(lease)
        if held and len(leases) < limit:
            for sid, value in (await self.heartbeats.dead_holders(held)).items():
                if len(leases) < limit:
                    lease = await self._claim_one(sid, worker_id, ttl_ms, now, {}, dead=value)
                    if lease is not None:
                        leases.append(lease)
        return leases

    async def _claim_one(self, session_id: str, worker_id: str, ttl_ms: int, now: int, held: dict[str, bytes],
                         dead: bytes = b"") -> Lease | None:
        reply = await self._s.claim(
            keys=[keys.session(session_id), keys.lease(session_id), keys.checkpoint(session_id),
                  keys.frames(session_id)],
            args=[worker_id, ttl_ms, dead])
        status = reply[0].decode()
        ready = self._l.ready(session_id)
        if status == "gone":
            await self._r.zrem(ready, session_id)
        elif status == "idle":
            await self._settle(session_id)
        elif status == "held":
            held[session_id] = bytes(reply[2])
            await self._r.zadd(ready, {session_id: now + min(int(reply[1]), _look_again_ms(ttl_ms))}, xx=True)
        else:
            _, token, processed, checkpoint_seq, data = reply
            await self._r.zadd(ready, {session_id: now + _look_again_ms(ttl_ms)}, xx=True)
            return Lease(session_id, worker_id, int(token), int(processed), int(checkpoint_seq),
                         bytes(data) if int(checkpoint_seq) > 0 else None)
        return None

    async def heartbeat(self, worker_id: str, ttl_ms: int, load: WorkerLoad | None = None) -> None:
        await self.heartbeats.beat(worker_id, ttl_ms, load)

    async def pool_load(self) -> list[WorkerLoad]:
        return await self.heartbeats.pool_load()

    async def frames_after(self, session_id: str, after_seq: int, upto_seq: int | None = None,
                           count: int = 1000) -> list[Frame]:
        entries = await self._r.xrange(keys.frames(session_id), f"({after_seq}-0",
                                       "+" if upto_seq is None else f"{upto_seq}-0", count=count)
        return [frame_from_entry(entry_id, data) for entry_id, data in entries]

    async def _take(self, cursors: dict[str, tuple[Lease, int]]) -> dict[str, Frame]:
        order = list(cursors)
        replies = await self._l.pipelined([
            script_call(self._s.take, [keys.session(sid), keys.lease(sid), keys.frames(sid)],
                        [self._owner(cursors[sid][0]), cursors[sid][1]]) for sid in order])
        found: dict[str, Frame] = {}
        for sid, reply in zip(order, replies, strict=True):
            if isinstance(reply, list) and reply:
                entry_id, flat = reply
                found[sid] = frame_from_entry(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
        return found

    async def take_next(self, cursors: dict[str, tuple[Lease, int]], timeout: float) -> dict[str, Frame]:
        if not cursors:
            await asyncio.sleep(timeout)
            return {}
        found = await self._take(cursors)
        if found or timeout <= 0:
            return found
        # Nothing yet: wait (without polling) until one of the streams grows, then take.
        streams = {keys.frames(sid): f"{cursor}-0" for sid, (_, cursor) in cursors.items()}
        block = max(1, int(timeout * 1000))
        reply = await (self._wait_slots(streams, block) if self._l.clustered
                       else self._r.xread(streams, count=1, block=block))
        arrived = {stream.decode().split("{", 1)[1].split("}", 1)[0] for stream, entries in reply or [] if entries}
        return await self._take({sid: cursors[sid] for sid in arrived if sid in cursors}) if arrived else {}

    async def _wait_slots(self, streams: dict[str, str], block_ms: int) -> list[Any]:
        """A Cluster refuses an ``XREAD`` over keys of several slots: one per slot, at once, and
        the first that brings entries answers. The others are left to end by themselves (within
        ``block_ms``, a tick's wait) rather than cancelled, which would drop their connections."""
        by_slot: dict[int, dict[str, str]] = {}
        for name, after in streams.items():
            by_slot.setdefault(self._r.keyslot(name), {})[name] = after
        pending = set()
        for group in list(by_slot.values())[:MAX_SLOT_WAITS]:
            task = asyncio.create_task(self._r.xread(group, count=1, block=block_ms))
            self._waits.add(task)
            task.add_done_callback(self._wait_done)
            pending.add(task)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            found = [item for task in done if not task.exception() for item in task.result() or []]
            if found:
                return found
            for task in done:
                if task.exception() is not None and not pending:
                    raise task.exception()
        return []

    def _wait_done(self, task: asyncio.Task) -> None:
        self._waits.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned wait's error is the next tick's to see

    async def commit(self, lease: Lease, results: list[Result], checkpoint: tuple[int, bytes] | None,
                     ttl_ms: int) -> int:
        sid = lease.session_id
        args: list[Any] = [self._owner(lease), ttl_ms, self._cap, checkpoint[0] if checkpoint else 0,
                           checkpoint[1] if checkpoint else b"", EVENTS_CAP]
        for result in results:
            args += [result.seq, result_payload(result),
                     json.dumps(result.events, separators=(",", ":")) if result.events else ""]
        backlog = await self._s.commit(
            keys=[keys.session(sid), keys.lease(sid), keys.results(sid), keys.frames(sid), keys.checkpoint(sid),
                  keys.events(sid)],
            args=args)
        if backlog < 0:
            raise StaleLease(f"lease {lease.token} on {sid} is no longer live")
        await self._r.zadd(self._l.ready(sid), {sid: _now_ms() + _look_again_ms(ttl_ms)}, xx=True)
        return int(backlog)

    async def renew(self, leases: list[Lease], ttl_ms: int) -> list[bool]:
        if not leases:
            return []
        replies = await self._l.pipelined([
            script_call(self._s.renew, [keys.lease(lease.session_id)], [self._owner(lease), ttl_ms])
            for lease in leases])
        alive = [bool(r) for r in replies]
        due = _now_ms() + _look_again_ms(ttl_ms)
        by_bucket: dict[str, dict[str, int]] = {}
        for lease, ok in zip(leases, alive, strict=True):
            if ok:
                by_bucket.setdefault(self._l.ready(lease.session_id), {})[lease.session_id] = due
        await self._l.pipelined([lambda c, n=n, m=m: c.zadd(n, m, xx=True) for n, m in by_bucket.items()])
        return alive

    async def release(self, lease: Lease, checkpoint: tuple[int, bytes] | None) -> None:
        sid = lease.session_id
        waiting = await self._s.release(
            keys=[keys.session(sid), keys.lease(sid), keys.checkpoint(sid), keys.frames(sid)],
            args=[self._owner(lease), checkpoint[0] if checkpoint else 0, checkpoint[1] if checkpoint else b""])
        if waiting < 0:
            raise StaleLease(f"lease {lease.token} on {sid} is no longer live")
        if waiting:
            await self._r.zadd(self._l.ready(sid), {sid: _now_ms()})  # due now: another worker may take it
        else:
            await self._settle(sid)

    async def wait_work(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if await self._l.count_due(self._l.ready_keys, _now_ms()):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.02, remaining))

    async def unclaimed(self) -> int:
        return await self._l.count_due(self._l.ready_keys, _now_ms())


class RedisResultLog:
    def __init__(self, client: aioredis.Redis, cap: int) -> None:
        self._r = client
        self._cap = cap

    async def append(self, session_id: str, result: Result) -> None:
        try:
            await self._r.xadd(keys.results(session_id), {"r": result_payload(result), "d": result.dropped},
                               id=f"{result.seq}-0", maxlen=self._cap, approximate=False)
            if result.events:
                await self._r.xadd(keys.events(session_id), {"e": json.dumps(result.events)}, maxlen=EVENTS_CAP)
        except ResponseError as exc:
            raise ValueError(f"result seq {result.seq} not after the last one: {exc}") from None

    async def read_after(self, session_id: str, after_seq: int, limit: int = 100,
                         timeout: float | None = None) -> list[Result]:
        key = keys.results(session_id)
        entries = await self._r.xrange(key, f"({after_seq}-0", "+", count=limit)
        if not entries and timeout:
            reply = await self._r.xread({key: f"{after_seq}-0"}, count=limit, block=max(1, int(timeout * 1000)))
            entries = reply[0][1] if reply else []
        return [result_from_entry(entry_id, data) for entry_id, data in entries]

    async def last(self, session_id: str) -> Result | None:
        entries = await self._r.xrevrange(keys.results(session_id), "+", "-", count=1)
        return result_from_entry(*entries[0]) if entries else None

    async def events(self, session_id: str, limit: int = 500) -> list[dict[str, Any]]:
        entries = await self._r.xrevrange(keys.events(session_id), "+", "-", count=limit)
        found: list[dict[str, Any]] = []
        for _, data in reversed(entries):
            found.extend(json.loads(data[b"e"]))
        return found[-limit:]

    async def delete(self, session_id: str) -> None:
        await self._r.delete(keys.results(session_id), keys.events(session_id))


class RedisStore(Store):
    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            return False

    async def delete_session(self, session_id: str) -> bool:
        return await self.sessions.delete(session_id)

    async def close(self) -> None:
        await self.streams.heartbeats.close()
        for task in list(self.streams._waits):
            task.cancel()
        await asyncio.gather(*self.streams._waits, return_exceptions=True)
        await self.client.aclose()


# A pool's connections: each socket's results wait (a blocking XREAD) holds one, so a gateway needs
# about one per live session. redis-py 8 caps a pool at 100 by default, which 100 live sessions ran
# out of (MaxConnectionsError, benchmarks/soak.py); Redis' own maxclients is 10,000.
MAX_CONNECTIONS = 10_000


def redis_store(url: str, results_cap: int = 1000, socket_timeout: float = 30.0, frame_codec: str = "raw",
                frame_quality: int = 90) -> RedisStore:
    """A store on the Redis at ``url`` (one Redis, a Cluster or a Sentinel's primary, see
    :mod:`service.store.redis_url`; a bad URL raises ``ValueError``). Commands fail fast while
    Redis is away (the callers back off and retry); the client reconnects by itself when it is back,
    and follows a Cluster's redirections (MOVED, ASK) and a Sentinel's failovers. Appended frames are
    logged in ``frame_codec`` (:mod:`service.store.frame_codec`; what a worker reads is decoded by it)."""
    if frame_codec not in CODECS:
        raise ValueError(f"unknown frame codec {frame_codec!r}")
    target = parse_redis_url(url)
    client = connect(target, socket_connect_timeout=2.0, socket_timeout=socket_timeout,
                     max_connections=MAX_CONNECTIONS)
    scripts = Scripts(client)
    layout = Layout(client, clustered=target.clustered, buckets=target.buckets)
    store = RedisStore(
        sessions=RedisSessionStore(client, scripts, layout),
        streams=RedisStreamLog(client, scripts, results_cap, layout, frame_codec, frame_quality),
        results=RedisResultLog(client, results_cap), kind="redis",
    )
    store.client = client
    store.target = target
    return store
