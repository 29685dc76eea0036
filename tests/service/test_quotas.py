"""Session quotas per client (API key, else address): 429 + Retry-After past the quota, the quota
back when a session is deleted or reaped — on a real server, in memory and on a shared Redis."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import redis as redis_py

from service.settings import Settings
from service.store import keys
from tests.redis_server import RedisServer
from tests.service.conftest import TEST_MODEL, run_server

pytestmark = pytest.mark.service


def create(url: str, **client_options) -> httpx.Response:
    headers = client_options.pop("headers", {})
    with httpx.Client(transport=httpx.HTTPTransport(**client_options), timeout=30) as client:
        return client.post(url + "/sessions", json={"model": TEST_MODEL}, headers=headers)


def delete(url: str, session: dict) -> None:
    response = httpx.delete(f"{url}/sessions/{session['session_id']}",
                            headers={"Authorization": f"Bearer {session['token']}"}, timeout=30)
    assert response.status_code == 204, response.text


def assert_quota_refusal(response: httpx.Response, quota: int) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_client_sessions" and str(quota) in error["message"]
    assert response.headers["Retry-After"] == "5"


def test_one_address_holds_at_most_the_shipped_quota_and_a_delete_gives_a_place_back(plumbing_weights):
    quota = Settings().max_sessions_per_client
    assert quota == 64  # the shipped default, as documented
    with run_server() as server:
        held = [create(server.http) for _ in range(quota)]
        assert all(r.status_code == 201 for r in held), [r.text for r in held if r.status_code != 201][:1]
        assert_quota_refusal(create(server.http), quota)
        # Another address is another client (loopback has the whole of 127/8).
        assert create(server.http, local_address="127.0.0.2").status_code == 201
        delete(server.http, held[0].json())
        assert create(server.http).status_code == 201
        assert_quota_refusal(create(server.http), quota)
        listed = httpx.get(server.http + "/sessions", params={"limit": 200}, timeout=30).json()
        assert len(listed["sessions"]) == quota + 1


def test_each_api_key_has_its_quota_and_a_reaped_session_gives_it_back(plumbing_weights):
    with run_server(api_keys=["key-a", "key-b"], max_sessions_per_client=2, unused_session_timeout_s=1.0) as server:
        a = {"headers": {"X-API-Key": "key-a"}}
        first, second = create(server.http, **a), create(server.http, **a)
        assert (first.status_code, second.status_code) == (201, 201)
        assert_quota_refusal(create(server.http, **a), 2)
        # The same address with another key is another client.
        assert create(server.http, headers={"Authorization": "Bearer key-b"}).status_code == 201
        # Sessions that never got a frame are reaped after unused_session_timeout_s: places back.
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.http}/sessions/{first.json()['session_id']}",
                        params={"token": first.json()["token"]}, timeout=30).status_code != 404:
            assert time.monotonic() < deadline, "the unused session was not reaped"
            time.sleep(0.2)
        assert create(server.http, **a).status_code == 201


@pytest.fixture
def redis_server(tmp_path):
    """This test's own Redis: its two servers run workers, which must never claim another test's
    sessions on the session-wide Redis (a server slow to stop once did, in a full run)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.kill()


def test_the_quota_holds_across_gateways_sharing_redis(plumbing_weights, redis_server):
    redis = redis_py.Redis.from_url(redis_server.url)
    quota_key = keys.client_sessions("addr:127.0.0.1")
    with run_server(redis_url=redis_server.url, max_sessions_per_client=3) as one, \
            run_server(redis_url=redis_server.url, max_sessions_per_client=3) as two:

        async def at_once() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*(client.post(url + "/sessions", json={"model": TEST_MODEL})
                                              for url in [one.http, two.http] * 6))

        outcomes = asyncio.run(at_once())
        admitted = [r.json() for r in outcomes if r.status_code == 201]
        assert len(admitted) == 3
        for refused in (r for r in outcomes if r.status_code != 201):
            assert_quota_refusal(refused, 3)
        assert redis.smembers(quota_key) == {s["session_id"].encode() for s in admitted}
        # A delete on the other gateway gives the place back to both.
        delete(two.http, admitted[0])
        assert redis.scard(quota_key) == 2
        again = create(one.http)
        assert again.status_code == 201
        assert_quota_refusal(create(two.http), 3)
        for session in [*admitted[1:], again.json()]:
            delete(one.http, session)
        assert not redis.exists(quota_key)  # nothing left behind
