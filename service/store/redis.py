"""The Redis implementation of the store protocols: gateways and workers share nothing else.

This module holds the stream logs (frames, leases, checkpoints, the ready set, heartbeats), the
result logs and :func:`redis_store`; session records are :mod:`service.store.redis_sessions`, the
byte layout of hashes and stream entries :mod:`service.store.redis_codec`, and the atomic steps
the Lua scripts of :mod:`service.store.redis_scripts`.

Per session (all keys share the hash tag ``{<session_id>}``, see :mod:`service.store.keys`):

* ``session``: a hash with the :class:`SessionRecord` fields plus the progress counters
  ``last_seq`` (the last seq given to a frame), ``processed_seq`` (results committed up to here)
  and ``fence`` (the last fencing token handed out);
* ``frames``: a stream whose entry id is ``<seq>-0``; frames stay until a checkpoint covers them;
* ``results``: a stream with entry id ``<seq>-0``, capped at ``results_cap`` entries;
* ``checkpoint``: a hash ``seq``, ``data`` (the state bytes), ``token`` (who wrote it);
* ``lease``: a string ``"<worker> <token>"`` with a TTL.

Global: ``movinet:sessions`` (zset by creation: listing), ``movinet:expiry`` (zset by idle
deadline: the reaper) and ``movinet:ready`` (zset of sessions that may need a worker, scored by
the time from which a worker should look at them: a held session's score is its lease's end,
so when a worker dies its sessions become due by themselves).

Every change to a session's keys that must be atomic is one Lua script over that session's keys
(and, for create, touch and append, the global zset that lists it). The multi-key ``XREAD`` in
:meth:`RedisStreamLog.take_next`, the cross-session pipelines and the global zsets are why Redis
Cluster is not supported yet. The ready set is a hint: every race on it ends with the session
listed (see :meth:`RedisStreamLog._settle`).
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from service.store.redis_codec import frame_from_entry, result_from_entry, result_payload
from service.store.redis_scripts import Scripts
from service.store.redis_sessions import RedisSessionStore

EVENTS_CAP = 500  # events kept per session (approximately: MAXLEN ~)


def _now_ms() -> int:
    return int(time.time() * 1000)


def heartbeat_ttl_ms(lease_ttl_ms: int) -> int:
    """A worker's heartbeat key outlives two leases (renewed every eighth of one): it names the
    worker's connection; whether that connection is open says if the worker is alive."""
    return max(400, 2 * lease_ttl_ms)


def _look_again_ms(lease_ttl_ms: int) -> int:
    """When a held session is due again in the ready set: half a lease after its last renewal
    (renewals, every quarter lease, push it on while the holder lives), so a dead holder is
    noticed within half a lease."""
    return max(100, lease_ttl_ms // 2)


class RedisStreamLog:
    def __init__(self, client: aioredis.Redis, scripts: Scripts, results_cap: int) -> None:
        self._r = client
        self._s = scripts
        self._cap = results_cap
        self._beat: aioredis.Redis | None = None  # the heartbeat's own connection

    async def append(self, session_id: str, frame: Frame, *, keep: int) -> Appended:
        seq, dropped = await self._s.append(
            keys=[keys.session(session_id), keys.frames(session_id), keys.READY],
            args=[keep, "" if frame.pts is None else repr(frame.pts), frame.frame_index, repr(frame.received_at),
                  frame.height, frame.width, frame.data, str(int(frame.frame_index) + 1), session_id, _now_ms()])
        if seq < 0:
            raise KeyError(f"session {session_id} is gone")
        frame.seq = int(seq)
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
        await self._r.zrem(keys.READY, session_id)
        if await self._s.backlog(keys=[keys.session(session_id), keys.frames(session_id)]):
            await self._r.zadd(keys.READY, {session_id: _now_ms()}, nx=True)

    async def claim(self, worker_id: str, limit: int, ttl_ms: int) -> list[Lease]:
        if limit <= 0:
            return []
        now = _now_ms()
        due = await self._r.zrangebyscore(keys.READY, "-inf", now, start=0, num=limit * 2)
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
            for sid, value in (await self._dead_holders(held)).items():
                if len(leases) < limit:
                    lease = await self._claim_one(sid, worker_id, ttl_ms, now, {}, dead=value)
                    if lease is not None:
                        leases.append(lease)
        return leases

    async def _dead_holders(self, held: dict[str, bytes]) -> dict[str, bytes]:
        """The held sessions whose holder is dead: its heartbeat names the Redis connection it
        keeps open, and that connection is gone (the kernel closed it when the process died). A
        slow or stopped worker keeps its connection, so it is never taken for dead here; its
        sessions move when their leases run out."""
        holders = {sid: value.decode().rsplit(" ", 1)[0] for sid, value in held.items()}
        beats = await self._r.mget([keys.worker(h) for h in holders.values()])
        connections: dict[str, int] = {}
        for sid, beat in zip(holders, beats, strict=True):
            try:
                connections[sid] = int(json.loads(beat)["connection"]) if beat else -1
            except (ValueError, KeyError, TypeError):
                continue  # a heartbeat without a connection id: only its lease tells
        wanted = sorted({c for c in connections.values() if c >= 0})
        if not wanted:
            return {}
        try:
            listing = await self._r.execute_command("CLIENT", "LIST", "ID", *wanted)
        except RedisError:  # CLIENT LIST refused (some managed services): leases decide alone
            return {}
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        connected = {int(part[3:]) for part in text.split() if part.startswith("id=")}
        return {sid: held[sid] for sid, c in connections.items() if c >= 0 and c not in connected}

    async def _claim_one(self, session_id: str, worker_id: str, ttl_ms: int, now: int, held: dict[str, bytes],
                         dead: bytes = b"") -> Lease | None:
        reply = await self._s.claim(
            keys=[keys.session(session_id), keys.lease(session_id), keys.checkpoint(session_id),
                  keys.frames(session_id)],
            args=[worker_id, ttl_ms, dead])
        status = reply[0].decode()
        if status == "gone":
            await self._r.zrem(keys.READY, session_id)
        elif status == "idle":
            await self._settle(session_id)
        elif status == "held":
            held[session_id] = bytes(reply[2])
            await self._r.zadd(keys.READY, {session_id: now + min(int(reply[1]), _look_again_ms(ttl_ms))}, xx=True)
        else:
            _, token, processed, checkpoint_seq, data = reply
            await self._r.zadd(keys.READY, {session_id: now + _look_again_ms(ttl_ms)}, xx=True)
            return Lease(session_id, worker_id, int(token), int(processed), int(checkpoint_seq),
                         bytes(data) if int(checkpoint_seq) > 0 else None)
        return None

    async def heartbeat(self, worker_id: str, ttl_ms: int, load: WorkerLoad | None = None) -> None:
        if self._beat is None:  # one connection this worker keeps open: its id says it is alive
            self._beat = self._r.client()  # single_connection_client
        connection = await self._beat.client_id()  # a reconnect gives a new id: written each beat
        value = {**(dataclasses.asdict(load) if load is not None else {}), "connection": int(connection)}
        await self._beat.set(keys.worker(worker_id), json.dumps(value), px=heartbeat_ttl_ms(ttl_ms))

    async def pool_load(self) -> list[WorkerLoad]:
        found: list[WorkerLoad] = []
        async for key in self._r.scan_iter(match=keys.worker("*"), count=1000):
            raw = await self._r.get(key)
            try:
                beat = json.loads(raw)
                beat.pop("connection", None)
                found.append(WorkerLoad(**beat))
            except (TypeError, ValueError, AttributeError):
                continue  # gone meanwhile, or a worker that publishes no load
        return found

    async def frames_after(self, session_id: str, after_seq: int, upto_seq: int | None = None,
                           count: int = 1000) -> list[Frame]:
        entries = await self._r.xrange(keys.frames(session_id), f"({after_seq}-0",
                                       "+" if upto_seq is None else f"{upto_seq}-0", count=count)
        return [frame_from_entry(entry_id, data) for entry_id, data in entries]

    async def _take(self, cursors: dict[str, tuple[Lease, int]]) -> dict[str, Frame]:
        order = list(cursors)
        async with self._r.pipeline(transaction=False) as pipe:
            for sid in order:
                lease, cursor = cursors[sid]
                await self._s.take(keys=[keys.session(sid), keys.lease(sid), keys.frames(sid)],
                                   args=[self._owner(lease), cursor], client=pipe)
            replies = await pipe.execute()
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
        reply = await self._r.xread(streams, count=1, block=max(1, int(timeout * 1000)))
        arrived = {stream.decode().split("{", 1)[1].split("}", 1)[0] for stream, entries in reply or [] if entries}
        return await self._take({sid: cursors[sid] for sid in arrived if sid in cursors}) if arrived else {}

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
        await self._r.zadd(keys.READY, {sid: _now_ms() + _look_again_ms(ttl_ms)}, xx=True)
        return int(backlog)

    async def renew(self, leases: list[Lease], ttl_ms: int) -> list[bool]:
        if not leases:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._s.renew(keys=[keys.lease(lease.session_id)], args=[self._owner(lease), ttl_ms],
                                    client=pipe)
            replies = await pipe.execute()
        alive = [bool(r) for r in replies]
        due = _now_ms() + _look_again_ms(ttl_ms)
        live = {lease.session_id: due for lease, ok in zip(leases, alive, strict=True) if ok}
        if live:
            await self._r.zadd(keys.READY, live, xx=True)
        return alive

    async def release(self, lease: Lease, checkpoint: tuple[int, bytes] | None) -> None:
        sid = lease.session_id
        waiting = await self._s.release(
            keys=[keys.session(sid), keys.lease(sid), keys.checkpoint(sid), keys.frames(sid)],
            args=[self._owner(lease), checkpoint[0] if checkpoint else 0, checkpoint[1] if checkpoint else b""])
        if waiting < 0:
            raise StaleLease(f"lease {lease.token} on {sid} is no longer live")
        if waiting:
            await self._r.zadd(keys.READY, {sid: _now_ms()})  # due now: another worker may take it
        else:
            await self._settle(sid)

    async def wait_work(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if await self._r.zcount(keys.READY, "-inf", _now_ms()):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.sleep(min(0.02, remaining))

    async def unclaimed(self) -> int:
        return int(await self._r.zcount(keys.READY, "-inf", _now_ms()))


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
        if self.streams._beat is not None:
            await self.streams._beat.aclose()
        await self.client.aclose()


def redis_store(url: str, results_cap: int = 1000, socket_timeout: float = 30.0) -> RedisStore:
    """A store on the Redis at ``url``. Commands fail fast while Redis is away (the callers back
    off and retry); the client reconnects by itself when it is back."""
    client = aioredis.from_url(url, decode_responses=False, socket_connect_timeout=2.0,
                               socket_timeout=socket_timeout, health_check_interval=15)
    scripts = Scripts(client)
    store = RedisStore(
        sessions=RedisSessionStore(client, scripts), streams=RedisStreamLog(client, scripts, results_cap),
        results=RedisResultLog(client, results_cap), kind="redis",
    )
    store.client = client
    return store
