"""Session records in Redis (:class:`RedisSessionStore`): the ``session`` hash of each session and
the ``sessions`` and ``expiry`` zsets that list them, changed together in one script each (on a
Redis Cluster: the listings in calls of their own, see :mod:`service.store.redis_shards`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis.asyncio as aioredis

from service.store import ClientSessionsFull, SessionRecord, SessionsFull, keys
from service.store.redis_codec import (
    _INT_FIELDS,
    _RECORD_FIELDS,
    decode_record,
    encode_field,
    session_keys,
)
from service.store.redis_scripts import Scripts
from service.store.redis_shards import Layout

KEY_GRACE_S = 120.0  # session keys outlive the idle timeout by this much (if every reaper is gone)


class RedisSessionStore:
    def __init__(self, client: aioredis.Redis, scripts: Scripts, layout: Layout | None = None) -> None:
        self._r = client
        self._s = scripts
        self._l = layout or Layout(client, clustered=False)

    async def create(self, record: SessionRecord, max_sessions: int | None = None,
                     max_per_client: int | None = None) -> None:
        sid = record.session_id
        per_client = (max_per_client or 0) if record.client else -1
        values: list[Any] = [sid, max_sessions or 0, repr(record.created_at), repr(record.expires_at), per_client]
        for f in dataclasses.fields(SessionRecord):
            values += [f.name, encode_field(f.name, getattr(record, f.name))]
        values += ["last_seq", "0", "processed_seq", "0", "fence", "0", "pending", "0"]
        if self._l.split:
            created = await self._create_split(record, values)
        else:
            script_keys = [keys.session(sid), keys.SESSIONS_BY_CREATION, keys.EXPIRY,
                           keys.client_sessions(record.client)]
            created = await self._s.create(keys=script_keys, args=values)
            if created == -2 and await self._forget_gone(record.client):
                created = await self._s.create(keys=script_keys, args=values)  # places of expired sessions freed
        if created == 0:
            raise KeyError(f"session {sid} exists")
        if created == -2:
            raise ClientSessionsFull(f"the client holds {max_per_client} sessions")
        if created < 0:
            raise SessionsFull(f"the store holds {max_sessions} sessions")
        await self.touch(sid, record.last_active_at)

    async def _create_split(self, record: SessionRecord, values: list[Any]) -> int:
        """A Cluster's create, one slot per step: admitted in the session index (the store's
        limit, atomic there), listed for the reaper, the record, then counted in the client's set
        (its quota; after the record, so that a place is never taken for the place of a gone
        session while its record is still to come); a refused step takes the earlier ones back.
        Same answers as ``CREATE``."""
        sid, per_client = record.session_id, values[4]
        admitted = await self._s.admit(keys=[keys.SESSIONS_BY_CREATION], args=[sid, values[1], values[2]])
        if admitted <= 0:
            return int(admitted)
        await self._r.zadd(self._l.expiry(sid), {sid: float(values[3])})  # first: a crash leaves only a hint
        undo = [lambda c: c.zrem(keys.SESSIONS_BY_CREATION, sid), lambda c: c.zrem(self._l.expiry(sid), sid)]
        if not await self._s.record(keys=[keys.session(sid)], args=values[5:]):
            await self._l.pipelined(undo)
            return 0
        if per_client >= 0:
            quota = keys.client_sessions(record.client)
            counted = await self._s.admit_client(keys=[quota], args=[sid, per_client])
            if counted == -2 and await self._forget_gone(record.client):
                counted = await self._s.admit_client(keys=[quota], args=[sid, per_client])
            if counted == -2:
                await self._r.delete(keys.session(sid))
                await self._l.pipelined(undo)
                return -2
        return 1

    async def _forget_gone(self, client: str) -> int:
        """Drop from the client's set the sessions whose record is gone without a delete (its keys
        expired with no reaper left); how many. A session id is never reused, so this cannot race
        with a create."""
        members = [m.decode() for m in await self._r.smembers(keys.client_sessions(client))]
        async with self._r.pipeline(transaction=False) as pipe:
            for session_id in members:
                pipe.exists(keys.session(session_id))
            alive = await pipe.execute()
        gone = [session_id for session_id, exists in zip(members, alive, strict=True) if not exists]
        if gone:
            await self._r.srem(keys.client_sessions(client), *gone)
        return len(gone)

    async def get(self, session_id: str) -> SessionRecord | None:
        return decode_record(await self._r.hgetall(keys.session(session_id)))

    async def list(self, cursor: str | None, limit: int) -> tuple[list[SessionRecord], str | None]:
        after: tuple[float, str] | None = None
        low: str | float = "-inf"
        if cursor:
            created, _, last_id = cursor.partition(":")
            after = (float(created), last_id)
            low = after[0]
        page: list[SessionRecord] = []
        offset = 0
        more = False
        while len(page) <= limit:
            batch = await self._r.zrangebyscore(keys.SESSIONS_BY_CREATION, low, "+inf", start=offset,
                                                num=limit + 1, withscores=True)
            if not batch:
                break
            offset += len(batch)
            for member, score in batch:
                session_id = member.decode()
                if after is not None and (score, session_id) <= after:
                    continue
                record = await self.get(session_id)
                if record is None:
                    continue
                if len(page) == limit:
                    more = True
                    break
                page.append(record)
            if more:
                break
        next_cursor = f"{page[-1].created_at!r}:{page[-1].session_id}" if more and page else None
        return page, next_cursor

    async def count(self) -> int:
        return int(await self._r.zcard(keys.SESSIONS_BY_CREATION))

    async def delete(self, session_id: str) -> bool:
        client = await self._r.hget(keys.session(session_id), "client")
        if self._l.split:  # the keys first: a listing a crash leaves behind is a stale hint
            deleted = await self._r.delete(*session_keys(session_id))
            names = [keys.SESSIONS_BY_CREATION, self._l.expiry(session_id), self._l.ready(session_id)]
            calls = [lambda c, n=n: c.zrem(n, session_id) for n in names]
            if client:
                calls.append(lambda c: c.srem(keys.client_sessions(client.decode()), session_id))
            await self._l.pipelined(calls)
            return bool(deleted)
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.delete(*session_keys(session_id))
            pipe.zrem(keys.SESSIONS_BY_CREATION, session_id)
            pipe.zrem(keys.EXPIRY, session_id)
            pipe.zrem(keys.READY, session_id)
            if client:  # its quota back
                pipe.srem(keys.client_sessions(client.decode()), session_id)
            deleted, *_ = await pipe.execute()
        return bool(deleted)

    async def touch(self, session_id: str, now: float) -> None:
        if not self._l.split:
            await self._s.touch(keys=[*session_keys(session_id)[:5], keys.EXPIRY],
                                args=[repr(now), KEY_GRACE_S, session_id])
            return
        deadline = await self._s.touch(keys=session_keys(session_id)[:5], args=[repr(now), KEY_GRACE_S, session_id, "1"])
        if deadline is not None:  # None: the session is gone, nothing to list
            await self._r.zadd(self._l.expiry(session_id), {session_id: float(deadline)})

    async def add_counters(self, session_id: str, **deltas: int) -> None:
        args: list[Any] = []
        for name, delta in deltas.items():
            if name not in _INT_FIELDS:
                raise AttributeError(name)
            if delta:
                args += [name, int(delta)]
        if args:
            await self._s.add(keys=[keys.session(session_id)], args=args)

    async def set_fields(self, session_id: str, **values: Any) -> None:
        args: list[str] = []
        for name, value in values.items():
            if name not in _RECORD_FIELDS:
                raise AttributeError(name)
            args += [name, encode_field(name, value)]
        if args:
            await self._s.set(keys=[keys.session(session_id)], args=args)

    async def expired(self, now: float) -> list[str]:
        if len(self._l.expiry_keys) == 1:
            return [m.decode() for m in await self._r.zrangebyscore(self._l.expiry_keys[0], "-inf", now)]
        return [m.decode() for m, _ in await self._l.due(self._l.expiry_keys, now, 100_000)]

    async def claim_producer(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._s.producer(keys=[keys.producer(session_id), keys.session(session_id)],
                                           args=[owner, ttl_ms]))

    async def producer(self, session_id: str) -> str | None:
        owner = await self._r.get(keys.producer(session_id))
        return owner.decode() if owner is not None else None

    async def release_producer(self, session_id: str, owner: str) -> None:
        await self._s.unproduce(keys=[keys.producer(session_id)], args=[owner])
