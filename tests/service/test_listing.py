"""``GET /sessions`` (every session's options and last labels) is not open to the network by default.

Without API keys it answers only on a server bound to loopback, over loopback; a server bound to
0.0.0.0 answers 403 ``listing_disabled`` saying to set ``MOVINET_API_KEYS``. With keys it needs
one, wherever it is bound. Creating a session and a session's own routes stay as they were.
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest

from service.api.routes import _require_listing_allowed, loopback
from service.errors import ApiError
from tests.service.conftest import run_server

pytestmark = pytest.mark.service


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.7", False), ("192.168.1.2", False), ("example.org", False),
    ("", False), (None, False),
])
def test_loopback(host, expected):
    assert loopback(host) is expected


def _request(server_address):
    return SimpleNamespace(scope={"server": server_address})


def _service(host, api_keys=()):
    return SimpleNamespace(settings=SimpleNamespace(host=host, api_keys=list(api_keys)))


def test_the_address_the_request_came_in_on_counts_too():
    _require_listing_allowed(_request(("127.0.0.1", 8000)), _service("127.0.0.1"))
    for request, service in [(_request(("10.1.2.3", 8000)), _service("127.0.0.1")),  # a proxied or odd route
                             (_request(("127.0.0.1", 8000)), _service("0.0.0.0")),
                             (_request(None), _service("127.0.0.1"))]:  # a Unix socket: not known to be local
        with pytest.raises(ApiError) as refused:
            _require_listing_allowed(request, service)
        assert (refused.value.status, refused.value.code) == (403, "listing_disabled")
    _require_listing_allowed(_request(("10.1.2.3", 8000)), _service("0.0.0.0", ["k"]))  # keys: checked before


def test_a_loopback_server_without_keys_lists(server):
    assert server.app.state.settings.host == "127.0.0.1"
    response = httpx.get(f"{server.http}/sessions")
    assert response.status_code == 200 and "sessions" in response.json()


def test_a_server_bound_to_every_address_without_keys_does_not_list(plumbing_weights):
    with run_server(host="0.0.0.0") as open_server:  # the settings say 0.0.0.0; the test reaches it on loopback
        response = httpx.get(f"{open_server.http}/sessions")
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "listing_disabled" and "MOVINET_API_KEYS" in error["message"]
        session = open_server.create()  # the rest of the open configuration works as before
        status = httpx.get(f"{open_server.http}/sessions/{session['session_id']}",
                           headers={"Authorization": f"Bearer {session['token']}"})
        assert status.status_code == 200


def test_with_keys_listing_needs_one_wherever_the_server_binds(plumbing_weights):
    with run_server(host="0.0.0.0", api_keys="list-key") as keyed:
        assert httpx.get(f"{keyed.http}/sessions").status_code == 401
        assert httpx.get(f"{keyed.http}/sessions", headers={"X-API-Key": "wrong"}).status_code == 403
        listed = httpx.get(f"{keyed.http}/sessions", headers={"X-API-Key": "list-key"})
        assert listed.status_code == 200 and listed.json()["total"] == 0
