"""``MOVINET_REDIS_URL``: the three deployments it names, and bad URLs refused in one clear line
that never repeats a password."""

from __future__ import annotations

import subprocess
import sys

import pytest

from service.store.redis_url import DEFAULT_BUCKETS, parse_redis_url, redact


def test_one_redis_is_the_url_as_given():
    target = parse_redis_url("redis://:pw@127.0.0.1:6379/2")
    assert (target.mode, target.url, target.buckets, target.clustered) == ("single", "redis://:pw@127.0.0.1:6379/2",
                                                                            1, False)
    assert parse_redis_url("rediss://cache.example.com:6380/0").tls


def test_a_cluster_url_lists_its_start_nodes_and_buckets():
    target = parse_redis_url("redis+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?buckets=64")
    assert target.mode == "cluster" and target.clustered
    assert target.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (target.username, target.password, target.buckets) == ("app", "s3cret", 64)
    assert "s3cret" not in repr(target) and "s3cret" not in target.describe()
    assert parse_redis_url("rediss+cluster://node-a").nodes == (("node-a", 7000),)
    assert parse_redis_url("redis+cluster://a:7000").buckets == DEFAULT_BUCKETS


def test_a_sentinel_url_names_the_sentinels_and_the_master():
    target = parse_redis_url("redis+sentinel://:pw@s1:26379,s2:26380/mymaster/3?sentinel_password=sp")
    assert target.mode == "sentinel" and not target.clustered
    assert target.nodes == (("s1", 26379), ("s2", 26380))
    assert (target.master, target.db, target.password, target.sentinel_password) == ("mymaster", 3, "pw", "sp")
    assert parse_redis_url("redis+sentinel://s1/m").nodes == (("s1", 26379),)


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:6379", "the scheme must be one of"),
    ("127.0.0.1:6379", "the scheme must be one of"),
    ("redis://", "no host"),
    ("redis+cluster://", "no nodes"),
    ("redis+cluster://a:70000", "no valid port"),
    ("redis+cluster://a:7000,:7001", "a node without a host"),
    ("redis+cluster://a:7000/1", "database 0 only"),
    ("redis+cluster://a:7000?buckets=0", "buckets must be"),
    ("redis+cluster://a:7000?shards=3", "unknown option"),
    ("redis+sentinel://s1:26379", "no master name"),
    ("redis+sentinel://s1:26379/m/x", "the database must be a number"),
    ("redis+sentinel://s1:26379/m?password=x", "unknown option"),
])
def test_bad_urls_are_refused_with_the_reason(url, why):
    with pytest.raises(ValueError, match=why) as error:
        parse_redis_url(url)
    assert str(error.value).startswith("MOVINET_REDIS_URL ")


def test_a_refusal_never_shows_the_password():
    with pytest.raises(ValueError) as error:
        parse_redis_url("redis+cluster://app:topsecret@a:7000?buckets=x")
    assert "topsecret" not in str(error.value) and "app:***@" in str(error.value)
    assert redact("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"


def test_the_gateway_refuses_a_bad_url_at_startup_in_one_line():
    """Through the real command: exit 2, one line on stderr naming the problem, no password."""
    done = subprocess.run([sys.executable, "-m", "service.cli", "gateway", "--port", "0"], capture_output=True,
                          text=True, timeout=120,
                          env={"MOVINET_REDIS_URL": "redis+sentinel://u:hunter2@127.0.0.1:26379", "PATH": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "no master name" in done.stderr and "hunter2" not in done.stderr + done.stdout
