"""Request bodies are read strictly and refused with a message that says what to fix.

``POST /sessions`` and the WebRTC offer on a real server: strict numbers (``true`` is not 1),
``idle_timeout_s`` in its range or refused (never clamped), duplicate keys, junk, NaN, deep
nesting, a wrong content type; no body means every default. No message holds a Python object
repr or an errno.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tests.service.conftest import TEST_MODEL

pytestmark = pytest.mark.service

JSON = {"Content-Type": "application/json"}
LEAKS = re.compile(r"<[^>]* at 0x[0-9a-f]+>|\[Errno|Traceback|object at")


def post(server, content: bytes | None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.http}/sessions", content=content, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, status: int, code: str, says: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"], error
    assert not LEAKS.search(error["message"]), error


@pytest.mark.parametrize("body, says", [
    ({"top_k": True}, "body.top_k: Input should be a valid integer"),
    ({"top_k": 1.0}, "body.top_k: Input should be a valid integer"),
    ({"top_k": "3"}, "body.top_k: Input should be a valid integer"),
    ({"min_score": True}, "body.min_score: Input should be a valid number"),
    ({"smoothing": "0.5"}, "body.smoothing: Input should be a valid number"),
    ({"window": {"frames": True}}, "body.window.frames: Input should be a valid integer"),
    ({"backpressure": {"max_backlog": False}}, "body.backpressure.max_backlog: Input should be a valid integer"),
    ({"source": {"type": "websocket", "frame_rate": True}}, "body.source.websocket.frame_rate"),
    ({"idle_timeout_s": 5e-324}, "body.idle_timeout_s: must be between 1 and 3600 seconds"),
    ({"idle_timeout_s": 0.5}, "body.idle_timeout_s: must be between 1 and 3600 seconds"),
    ({"idle_timeout_s": 999999}, "body.idle_timeout_s: must be between 1 and 3600 seconds"),
    ({"idle_timeout_s": True}, "body.idle_timeout_s: Input should be a valid number"),
    ({"source": {"type": "x" * 5000}}, "body.source: must be an object whose type is websocket, rtsp or webrtc"),
    ({"source": {"type": ["websocket"]}}, "body.source: must be an object whose type is"),
])
def test_lax_values_are_refused(server, body, says):
    assert_refused(post(server, json.dumps(body).encode(), JSON), 422, "invalid_request", says)


@pytest.mark.parametrize("raw, says", [
    (b'{"top_k": 1, "top_k": 2}', "the body has the key 'top_k' twice"),
    (b'{"window": {"frames": 8, "frames": 9}}', "the body has the key 'frames' twice"),
    (b"not json", "the body is not valid JSON: Expecting value (line 1, column 1)"),
    (b'{"top_k": 3', "the body is not valid JSON: Expecting ',' delimiter (line 1, column 12)"),
    (b"[1, 2]", "the body must be a JSON object"),
    (b'"top_k"', "the body must be a JSON object"),
    (b'{"min_score": NaN}', "the body has NaN, which is not JSON"),
    (b'{"min_score": -Infinity}', "the body has -Infinity, which is not JSON"),
    (b'{"min_score": 1e999}', "the body has a number too large for a float"),
    (b'{"top_k": ' + b"9" * 5000 + b"}", "the body has a number with too many digits"),
    (b"[" * 100 + b"]" * 100, "the body is nested more than 32 deep"),
    (b'\xff\xfe{"top_k": 3}', "the body is not valid JSON: it is not UTF-8"),
])
def test_bad_json_is_named(server, raw, says):
    assert_refused(post(server, raw, JSON), 422, "invalid_request", says)


@pytest.mark.parametrize("headers", [{"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"},
                                     {}, {"Content-Type": "application/jsonp"}])
def test_a_body_without_the_json_content_type_is_refused(server, headers):
    response = post(server, b'{"top_k": 3}', headers)
    assert_refused(response, 415, "unsupported_media_type", "send the body as JSON with Content-Type: application/json")


@pytest.mark.parametrize("content, headers", [
    (None, None),  # no body at all
    (b"", JSON),
    (b"  \r\n", JSON),
    (b"{}", {"Content-Type": "application/json; charset=utf-8"}),
    (b"{}", {"Content-Type": "application/merge-patch+json"}),
    (b'\xef\xbb\xbf{"top_k": 2}', JSON),  # a UTF-8 byte order mark
])
def test_no_body_means_every_default(server, content, headers):
    response = post(server, content, headers)
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["model"] == TEST_MODEL  # the server's default model
    status = httpx.get(f"{server.http}/sessions/{session['session_id']}",
                       headers={"Authorization": f"Bearer {session['token']}"}).json()
    assert status["options"]["top_k"] == (2 if content and b"top_k" in content else 5)
    httpx.delete(f"{server.http}/sessions/{session['session_id']}", headers={"Authorization": f"Bearer {session['token']}"})


@pytest.mark.parametrize("idle", [1, 1.5, 3600])
def test_the_idle_timeout_range_is_inclusive(server, idle):
    session = server.create(idle_timeout_s=idle)
    httpx.delete(f"{server.http}/sessions/{session['session_id']}", headers={"Authorization": f"Bearer {session['token']}"})


def test_the_webrtc_offer_body_is_read_the_same_way(server):
    session = server.create()
    url, auth = session["webrtc_url"], {"Authorization": f"Bearer {session['token']}"}
    assert_refused(httpx.post(url, content=b'{"sdp": "v=0", "sdp": "v=1"}', headers={**auth, **JSON}), 422,
                   "invalid_request", "the body has the key 'sdp' twice")
    assert_refused(httpx.post(url, content=b'{"sdp": "v=0"}', headers=auth), 415, "unsupported_media_type",
                   "Content-Type: application/json")
    assert_refused(httpx.post(url, headers=auth), 422, "invalid_request", "body.sdp: Field required")
    httpx.delete(f"{server.http}/sessions/{session['session_id']}", headers=auth)


def test_the_bodies_are_in_the_openapi_schema(server):
    schema = httpx.get(f"{server.http}/openapi.json").json()
    create = schema["paths"]["/sessions"]["post"]["requestBody"]
    offer = schema["paths"]["/sessions/{session_id}/webrtc"]["post"]["requestBody"]
    assert create["required"] is False and offer["required"] is True
    assert create["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/SessionCreate"}
    components = schema["components"]["schemas"]
    assert components["SessionCreate"]["properties"]["idle_timeout_s"]["minimum"] == 1.0
    assert components["SessionCreate"]["properties"]["model"]["anyOf"][0]["maxLength"] == 128
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert refs <= set(components), refs - set(components)
