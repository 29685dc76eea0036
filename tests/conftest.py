"""Fixtures shared by every test folder."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.needs import require
from tests.redis_server import RedisServer


def _name_lambdas_despite_cpython_gh_106905() -> None:
    """CPython before 3.11.8 / 3.12.1 may raise ``SystemError: AST constructor recursion depth
    mismatch`` from ``ast.parse`` (python/cpython#106905: a wrong depth count, seen with threads:
    the fuzzed server runs in one). Hypothesis parses a lambda's source file to name a filtered
    strategy in its statistics ("Retried draw from ... to satisfy filter"); one such SystemError,
    deep in schemathesis's strategies, failed a full run as if a route had answered wrongly. The
    name is only a label: on that error the lambda gets hypothesis's own "unknown" description."""
    from hypothesis.internal import lambda_sources

    describe = lambda_sources._lambda_description

    def described(f, *args, **kwargs):
        try:
            return describe(f, *args, **kwargs)
        except SystemError:
            return "lambda: <unknown>"

    lambda_sources._lambda_description = described


_name_lambdas_despite_cpython_gh_106905()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One private redis-server for the session's tests (flush it between tests that need it clean)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


def _needs_cluster_tools() -> None:
    from tests.redis_cluster import tools_missing

    require(tools_missing())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """One private six-node Redis Cluster (3 primaries, 3 replicas) for the session's tests; its
    indexes in 4 buckets, so that one session's listings and another's live on other shards."""
    _needs_cluster_tools()
    from tests.redis_cluster import RedisClusterServers

    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster"), buckets=4).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory):
    """A private primary, replica and Sentinel (master name ``movinet``)."""
    _needs_cluster_tools()
    from tests.redis_cluster import SentinelServers

    servers = SentinelServers(tmp_path_factory.mktemp("sentinel")).start()
    yield servers
    servers.stop()
