"""Every Redis key name, in one place (used by :mod:`service.store.redis`).

All keys of a session share the hash tag ``{<session_id>}`` so that a session's keys live in one
Redis Cluster slot and one Lua script may touch them all. The global indexes (``ready``,
``expiry``) are one key each on one Redis; on a Cluster they are split into buckets, each with its
own hash tag (:func:`ready_bucket`, :func:`expiry_bucket`), so that they spread over the shards
(see :mod:`service.store.redis_shards`).
"""

from __future__ import annotations

PREFIX = "movinet"


def session(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:session"  # hash: the SessionRecord fields


def frames(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:frames"  # stream: frame log, entry id = seq


def results(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:results"  # stream: results, capped (MAXLEN)


def events(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:events"  # stream: action events, capped (MAXLEN)


def checkpoint(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:checkpoint"  # hash: seq, state bytes, version


def lease(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:lease"  # string with TTL: owner worker + fencing token


SESSIONS_BY_CREATION = f"{PREFIX}:sessions"  # zset: session_id scored by creation time
EXPIRY = f"{PREFIX}:expiry"  # zset: session_id scored by its idle deadline (unix seconds)
READY = f"{PREFIX}:ready"  # zset: sessions that may need a worker, scored by when to look (unix ms)


def ready_bucket(bucket: int) -> str:
    return f"{PREFIX}:ready:{{r{bucket:03d}}}"  # READY, one of its buckets on a Cluster


def expiry_bucket(bucket: int) -> str:
    return f"{PREFIX}:expiry:{{e{bucket:03d}}}"  # EXPIRY, one of its buckets on a Cluster


def producer(session_id: str) -> str:
    return f"{PREFIX}:{{{session_id}}}:producer"  # string with TTL: the socket that sends the frames


def client_sessions(client: str) -> str:
    return f"{PREFIX}:client:{{{client}}}:sessions"  # set: the live sessions one client created (its quota)


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"  # string with TTL: the worker is alive (its heartbeat)
