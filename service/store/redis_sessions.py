"""Session records in Redis (:class:`RedisSessionStore`): the ``session`` hash of each session and
the ``sessions`` and ``expiry`` zsets that list them, changed together in one script each."""

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

KEY_GRACE_S = 120.0  # session keys outlive the idle timeout by this much (if every reaper is gone)


class RedisSessionStore:
    def __init__(self, client: aioredis.Redis, scripts: Scripts) -> None:
        self._r = client
        self._s = scripts

    async def create(self, record: SessionRecord, max_sessions: int | None = None,
                     max_per_client: int | None = None) -> None:
        sid = record.session_id
        per_client = (max_per_client or 0) if record.client else -1
        values: list[Any] = [sid, max_sessions or 0, repr(record.created_at), repr(record.expires_at), per_client]
        for f in dataclasses.fields(SessionRecord):
            values += [f.name, encode_field(f.name, getattr(record, f.name))]
        values += ["last_seq", "0", "processed_seq", "0", "fence", "0"]
        script_keys = [keys.session(sid), keys.SESSIONS_BY_CREATION, keys.EXPIRY, keys.client_sessions(record.client)]
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
        await self._s.touch(keys=[*session_keys(session_id)[:5], keys.EXPIRY], args=[repr(now), KEY_GRACE_S, session_id])

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
        members = await self._r.zrangebyscore(keys.EXPIRY, "-inf", now)
        return [m.decode() for m in members]

    async def claim_producer(self, session_id: str, owner: str, ttl_ms: int) -> bool:
        return bool(await self._s.producer(keys=[keys.producer(session_id)], args=[owner, ttl_ms]))

    async def producer(self, session_id: str) -> str | None:
        owner = await self._r.get(keys.producer(session_id))
        return owner.decode() if owner is not None else None

    async def release_producer(self, session_id: str, owner: str) -> None:
        await self._s.unproduce(keys=[keys.producer(session_id)], args=[owner])
