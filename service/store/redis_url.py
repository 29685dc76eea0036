"""``MOVINET_REDIS_URL``: which Redis deployment the store talks to, and its client.

Three forms (TLS: ``rediss`` in place of ``redis``):

* ``redis://[user:password@]host:port[/db]``: one Redis (or a managed one behind one endpoint);
* ``redis+cluster://[user:password@]host:port,host:port,...[?buckets=N]``: a Redis Cluster; the
  nodes listed are where the client starts, it learns the others (``buckets``: how many shards
  each global index is split into, default :data:`DEFAULT_BUCKETS`);
* ``redis+sentinel://[user:password@]host:port,host:port,.../<master-name>[/db][?sentinel_password=...]``:
  the primary that the Sentinels name; the client asks them again after a failover.

:func:`parse_redis_url` is pure and raises ``ValueError`` with a message that never repeats a
password; :func:`connect` builds the client (redis-py's ``Redis``, a ``RedisCluster`` with the
fixes of :mod:`service.store.redis_cluster`, or a Sentinel's ``master_for``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_BUCKETS = 16
MAX_BUCKETS = 1024
_SCHEMES = {"redis": ("single", False), "rediss": ("single", True), "unix": ("single", False),
            "redis+cluster": ("cluster", False), "rediss+cluster": ("cluster", True),
            "redis+sentinel": ("sentinel", False), "rediss+sentinel": ("sentinel", True)}


@dataclass(frozen=True)
class RedisTarget:
    mode: str  # "single" | "cluster" | "sentinel"
    url: str = field(repr=False)  # the URL as given (single: redis-py parses it)
    nodes: tuple[tuple[str, int], ...] = ()  # cluster: startup nodes; sentinel: the sentinels
    master: str = ""  # sentinel: the monitored primary's name
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    buckets: int = 1  # global indexes split in this many shards (1: one key each, as on one Redis)

    @property
    def clustered(self) -> bool:
        return self.mode == "cluster"

    def describe(self) -> str:
        """For logs: the mode and the nodes, no credentials."""
        where = ",".join(f"{h}:{p}" for h, p in self.nodes) or redact(self.url)
        return f"{self.mode} {where}" + (f" master={self.master}" if self.master else "")


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"{parts.username or ''}:***@{netloc}").geturl()


def _bad(url: str, why: str) -> ValueError:
    return ValueError(f"MOVINET_REDIS_URL {redact(url)!r}: {why}")


def _nodes(url: str, hostlist: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes = []
    for item in hostlist.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep:
            host, port = port, str(default_port)
        host = host.strip("[]")
        if not host:
            raise _bad(url, f"a node without a host ({item.strip()!r}); expected host:port,host:port,...")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise _bad(url, f"node {item.strip()!r} has no valid port")
        nodes.append((host, int(port)))
    return tuple(nodes)


def _db(url: str, text: str) -> int:
    if text == "":
        return 0
    if not text.isdigit():
        raise _bad(url, f"the database must be a number, got {text!r}")
    return int(text)


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise _bad(url, "the scheme must be one of redis://, rediss://, unix://, redis+cluster://, "
                   "redis+sentinel:// (rediss+ for TLS)")
    mode, tls = _SCHEMES[scheme.lower()]
    if mode == "single":
        if scheme.lower() != "unix" and not urlsplit(url).hostname:
            raise _bad(url, "no host (redis://host:port/db)")
        return RedisTarget("single", url, tls=tls)
    userinfo, at, after = rest.rpartition("@")
    if not at:
        userinfo, after = "", rest
    hostpart, _, query = after.partition("?")
    hostlist, _, path = hostpart.partition("/")
    if not hostlist:
        raise _bad(url, "no nodes; expected host:port,host:port,...")
    user, colon, password = userinfo.partition(":")
    username = unquote(user) or None
    password_value = unquote(password) if colon else None
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    nodes = _nodes(url, hostlist, 7000 if mode == "cluster" else 26379)
    if mode == "cluster":
        unknown = set(options) - {"buckets"}
        if unknown:
            raise _bad(url, f"unknown option(s) {sorted(unknown)}; a cluster URL takes ?buckets=N")
        if path not in ("", "0"):
            raise _bad(url, "a Redis Cluster has database 0 only")
        text = options.get("buckets", str(DEFAULT_BUCKETS))
        if not text.isdigit() or not 1 <= int(text) <= MAX_BUCKETS:
            raise _bad(url, f"buckets must be a whole number from 1 to {MAX_BUCKETS}, got {text!r}")
        return RedisTarget("cluster", url, nodes, db=0, username=username, password=password_value, tls=tls,
                           buckets=int(text))
    unknown = set(options) - {"sentinel_password"}
    if unknown:
        raise _bad(url, f"unknown option(s) {sorted(unknown)}; a sentinel URL takes ?sentinel_password=...")
    master, _, db = path.partition("/")
    if not master:
        raise _bad(url, "no master name; expected redis+sentinel://host:port,.../<master-name>[/db]")
    return RedisTarget("sentinel", url, nodes, master=unquote(master), db=_db(url, db.strip("/")),
                       username=username, password=password_value,
                       sentinel_password=options.get("sentinel_password") or None, tls=tls)


def connect(target: RedisTarget, **options: Any) -> Any:
    """The asyncio client for ``target`` (bytes replies); ``options``: socket timeouts and the like."""
    if target.mode == "single":
        import redis.asyncio as aioredis

        return aioredis.from_url(target.url, decode_responses=False, health_check_interval=15, **options)
    auth = {"username": target.username, "password": target.password}
    if target.mode == "cluster":
        from redis.asyncio.cluster import ClusterNode

        from service.store.redis_cluster import MovinetCluster

        return MovinetCluster(startup_nodes=[ClusterNode(h, p) for h, p in target.nodes], decode_responses=False,
                              ssl=target.tls, require_full_coverage=True, **auth, **options)
    from redis.asyncio.sentinel import Sentinel

    sentinel_kwargs = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    if target.tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(target.master, db=target.db, decode_responses=False, ssl=target.tls,
                               health_check_interval=15, **auth, **options)
