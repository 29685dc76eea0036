"""No secret in any log line: session tokens and API keys, in URLs, headers and subprotocols.

The real command (``movinet-service serve --log-level trace``: uvicorn then prints every ASGI
scope, headers and query strings included) serves HTTP requests and WebSockets that carry
tokens and keys every way a client can send them; no captured line may contain one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.client import MovinetClient
from service.logs import RedactSecrets, redact
from tests.service.cli_server import cli_server
from tests.service.conftest import TEST_MODEL, collect_until_close, jpeg, moving_frames, results_of

pytestmark = pytest.mark.service


@pytest.mark.parametrize("line, secret", [
    ('127.0.0.1:50 - "GET /sessions/s_1/stream?token=Ab-_9xYz HTTP/1.1" 200', "Ab-_9xYz"),
    ('"GET /sessions/s_1?after_seq=3&token=Ab-_9xYz HTTP/1.1" 200', "Ab-_9xYz"),
    ('"GET /sessions?api_key=k3y-k3y&limit=5 HTTP/1.1" 401', "k3y-k3y"),
    ('"GET /x?%74oken=Ab-_9xYz HTTP/1.1"', "Ab-_9xYz"),  # the name percent-encoded: still the token
    ("scope={'query_string': b'token=Ab-_9xYz', 'headers': [(b'authorization', b'Bearer k3y-k3y')]}", "k3y-k3y"),
    ("scope={'query_string': b'token=Ab-_9xYz'}", "Ab-_9xYz"),
    ("'subprotocols': ['movinet', 'bearer.Ab-_9xYz']", "Ab-_9xYz"),
    ("(b'x-api-key', b'k3y-k3y')", "k3y-k3y"),
    ("< X-API-Key: k3y-k3y", "k3y-k3y"),
    ("rtsp://cam/s?password=pa55&channel=1", "pa55"),
])
def test_secrets_are_redacted_in_any_shape_of_line(line, secret):
    redacted = redact(line)
    assert secret not in redacted and "***" in redacted


def test_what_is_not_secret_stays():
    line = "event=lease_taken worker=w1 session_id=s_1 token=7 after_seq=3 GET /sessions?limit=5&cursor=abc"
    assert redact(line) == line  # a fencing token is a counter; other parameters are left alone


def test_the_filter_keeps_uvicorns_access_arguments_and_redacts_tracebacks():
    args = ("127.0.0.1:5", "GET", "/sessions/s_1/stream?token=Ab-_9xYz", "1.1", 200)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)
    assert RedactSecrets().filter(record)
    assert len(record.args) == 5 and record.args[2] == "/sessions/s_1/stream?token=***"
    try:
        raise ValueError("bad url /x?token=Ab-_9xYz")
    except ValueError:
        import sys

        failed = logging.LogRecord("service", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RedactSecrets().filter(failed)
    assert "Ab-_9xYz" not in failed.exc_text and "token=***" in failed.exc_text


def test_no_token_nor_key_reaches_any_log_line_of_a_real_server(tmp_path):
    api_key = "key-" + secrets.token_urlsafe(16)
    wrong_token = "wrong-" + secrets.token_urlsafe(16)
    with cli_server(tmp_path / "server.log", "--log-level", "trace", MOVINET_API_KEYS=api_key) as server:
        created = [httpx.post(f"{server.http}/sessions", json={"model": TEST_MODEL}, timeout=30,
                              headers={"Authorization": f"Bearer {api_key}"}).json(),
                   httpx.post(f"{server.http}/sessions", json={"model": TEST_MODEL}, timeout=30,
                              headers={"X-API-Key": api_key}).json()]
        first, second = created
        tokens = [first["token"], second["token"]]
        url = f"{server.http}/sessions/{first['session_id']}"
        assert httpx.get(url, params={"token": first["token"]}).status_code == 200
        assert httpx.get(url, headers={"Authorization": f"Bearer {first['token']}"}).status_code == 200
        assert httpx.get(f"{url}?%74oken={first['token']}").status_code == 200  # Starlette decodes the name
        assert httpx.get(url, params={"token": wrong_token}).status_code == 403
        assert httpx.get(f"{server.http}/sessions", params={"api_key": api_key}).status_code == 401
        assert httpx.get(f"{server.http}/sessions", headers={"X-API-Key": api_key}).status_code == 200

        async def sockets() -> None:
            frames = moving_frames(4, seed=3)
            # The query token (old clients), the header, and the browser's subprotocol.
            async with connect(f"{server.ws}/sessions/{first['session_id']}/stream?token={first['token']}") as ws:
                await ws.recv()
                for i, frame in enumerate(frames):
                    await ws.send(json.dumps({"type": "frame", "pts": i / 5}))
                    await ws.send(jpeg(frame))
                await ws.send(json.dumps({"type": "eos"}))
                assert len(results_of(await collect_until_close(ws))) == 4
            async with connect(f"{server.ws}/sessions/{first['session_id']}/labels",
                               additional_headers={"Authorization": f"Bearer {first['token']}"}) as ws:
                assert json.loads(await ws.recv())["type"] == "session"
            async with connect(f"{server.ws}/sessions/{second['session_id']}/stream",
                               subprotocols=["movinet", f"bearer.{second['token']}"]) as ws:
                assert ws.subprotocol == "movinet"
                assert json.loads(await ws.recv())["type"] == "session"
            async with connect(f"{server.ws}/sessions/{second['session_id']}/stream?token={wrong_token}") as ws:
                assert json.loads(await ws.recv())["code"] == "token_invalid"
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            # Our own client: the token in a header.
            summary = await MovinetClient(server.http).stream(
                second, iter([(i / 5, [i], frame) for i, frame in enumerate(frames)]), realtime=False)
            assert len(summary.results) == 4

        asyncio.run(sockets())
        assert httpx.delete(url, params={"token": first["token"]}).status_code == 204
    lines = server.log_lines()
    for secret in [*tokens, api_key, wrong_token]:
        leaks = [line for line in lines if secret in line]
        assert not leaks, leaks[:3]
    text = "\n".join(lines)
    # The lines are there, redacted (not merely missing): access lines, WebSocket lines, traced scopes.
    assert f'"GET /sessions/{first["session_id"]}?token=*** HTTP/1.1" 200' in text
    assert f'"WebSocket /sessions/{first["session_id"]}/stream?token=***" [accepted]' in text
    assert "'query_string': b'token=***'" in text and "'subprotocols': ['movinet', 'bearer.***']" in text
    assert "< authorization: Bearer ***" in text and "< sec-websocket-protocol: movinet, bearer.***" in text
    assert "'query_string': b'api_key=***'" in text
