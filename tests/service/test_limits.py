"""What a client can make the server read, hold or wait for is bounded (``service/api/limits.py``).

Against the real command (``movinet-service serve``, short timeouts) with raw sockets: bodies
over the limit get 413 by Content-Length and by counting chunks; a silent connection, half a
request line and a slow drip of bytes are answered 408 and closed; an idle keep-alive
connection is closed; a 9 KB request target gets a 414 that reaches the client (also on a
WebSocket upgrade, where the WebSocket layer used to fail without an answer); oversized headers
get 431; a WebSocket that stops answering pings is closed. The server serves on meanwhile.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.service.cli_server import cli_server
from tests.service.conftest import TEST_MODEL

pytestmark = pytest.mark.service

HEAD_TIMEOUT_S = 2.0
KEEP_ALIVE_S = 1
PING_S = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    log = tmp_path_factory.mktemp("limits") / "server.log"
    with cli_server(log, MOVINET_HTTP_HEAD_TIMEOUT_S=str(HEAD_TIMEOUT_S), MOVINET_HTTP_KEEP_ALIVE_S=str(KEEP_ALIVE_S),
                    MOVINET_WS_PING_INTERVAL_S=str(PING_S), MOVINET_WS_PING_TIMEOUT_S=str(PING_S),
                    MOVINET_CREATE_RATE_PER_MIN="6000", MOVINET_CREATE_BURST="100") as server:
        yield server
        assert httpx.get(server.http + "/healthz").status_code == 200  # every test left it serving


def read_response(sock: socket.socket, eof_wait_s: float = 5.0) -> tuple[bytes, bytes, bool]:
    """(head, body, closed): one HTTP response read from a raw socket, and whether EOF followed
    within ``eof_wait_s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data, b"", True
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    timeout = sock.gettimeout()
    sock.settimeout(eof_wait_s)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    sock.settimeout(timeout)
    return head, body, closed


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


# --- bodies ----------------------------------------------------------------------------------------


def test_a_64_mb_body_is_refused_by_its_length_without_being_read(served):
    started = time.monotonic()
    response = httpx.post(f"{served.http}/sessions", content=b'{"model": "' + b"x" * (64 << 20) + b'"}',
                          headers={"Content-Type": "application/json"}, timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
    assert len(response.content) < 200 and "65536" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10
    # By the header alone: the server answers before a byte of the body is sent.
    with served.connect() as sock:
        sock.sendall(b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 67108864\r\n\r\n")
        head, body, closed = read_response(sock)
    assert status(head) == 413 and error_code(body) == "body_too_large" and closed


def test_a_chunked_body_is_counted(served):
    def chunks():
        for _ in range(100):
            yield b" " * 10_000

    response = httpx.post(f"{served.http}/sessions", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_many_keys_cost_nothing_and_are_not_echoed(served):
    huge = json.dumps({f"key{i}": i for i in range(100_000)}).encode()  # ~1.6 MB
    assert httpx.post(f"{served.http}/sessions", content=huge,
                      headers={"Content-Type": "application/json"}).status_code == 413
    under = json.dumps({f"k{i}": i for i in range(5_000)}, separators=(",", ":")).encode()  # under 64 KiB
    assert len(under) < 64 * 1024
    started = time.monotonic()
    response = httpx.post(f"{served.http}/sessions", content=under, headers={"Content-Type": "application/json"})
    assert time.monotonic() - started < 3
    error = response.json()["error"]
    assert response.status_code == 422 and error["code"] == "invalid_request"
    assert len(error["message"]) < 400 and "and 4995 more" in error["message"]


def test_names_are_bounded_and_never_echoed_in_full(served):
    long_name = "movinet_" + "z" * 110  # within the field's 128 characters: an unknown model
    response = httpx.post(f"{served.http}/sessions", json={"model": long_name})
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_model"
    assert long_name not in response.text and len(response.text) < 300
    response = httpx.post(f"{served.http}/sessions", json={"model": "m" * 40_000, "weights": "w" * 200})
    assert response.status_code == 422 and "at most 128 characters" in response.text
    assert "m" * 100 not in response.text and len(response.text) < 400
    response = httpx.get(f"{served.http}/models/{'n' * 7000}/labels")
    assert response.status_code == 404 and len(response.text) < 300


def test_the_webrtc_offer_route_takes_a_64_kib_sdp(served):
    session = httpx.post(f"{served.http}/sessions", json={"model": TEST_MODEL}).json()
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    while sum(len(line) + 2 for line in lines) < 64 * 1024 - 40:
        lines.append("a=x-filler:" + "f" * 20)
    sdp = "\r\n".join(lines) + "\r\n"
    body = json.dumps({"sdp": sdp, "type": "offer"}).encode()
    assert len(body) > 64 * 1024  # over the other routes' limit
    response = httpx.post(session["webrtc_url"], content=body, timeout=60,
                          headers={"Content-Type": "application/json", "Authorization": f"Bearer {session['token']}"})
    assert response.status_code not in (413, 500), response.text  # read and judged (an SDP without video)
    assert response.json()["error"]["code"] in ("bad_offer", "no_video")


# --- connections -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [b"", b"GET /heal", b"GET /healthz HTTP/1.1\r\nHost: x\r\n"])
def test_a_silent_or_half_sent_request_is_answered_408_and_closed(served, sent):
    with served.connect() as sock:
        started = time.monotonic()
        sock.sendall(sent)
        head, body, closed = read_response(sock)
        elapsed = time.monotonic() - started
    assert status(head) == 408 and error_code(body) == "request_timeout" and closed
    assert HEAD_TIMEOUT_S - 0.2 < elapsed < HEAD_TIMEOUT_S + 3


def test_a_slow_drip_does_not_extend_the_deadline(served):
    with served.connect() as sock:
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Drip: " + b"a" * 100
        closed_after = None
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.1)
            if time.monotonic() - started > HEAD_TIMEOUT_S + 3:
                break
        head, body, closed = read_response(sock)
        closed_after = time.monotonic() - started
    assert status(head) == 408 and closed and closed_after < HEAD_TIMEOUT_S + 4


def _drip(sock: socket.socket, seconds: float, *, until_eof: bool) -> tuple[bytes, bool]:
    """Send a byte every 0.2 s for at most ``seconds``: until the first answer bytes arrive, or
    (``until_eof``) until the server closes. Returns what arrived and whether it closed."""
    sock.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.sendall(b" ")
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
        if not until_eof:
            return got, False
    return got, False


def test_a_body_sent_a_byte_at_a_time_is_answered_408_and_a_body_cut_off_leaves_no_traceback(served):
    """The body has the head's deadline (a drip of body bytes held the connection forever), and a
    client that hangs up mid-body is no ASGI error in the log."""
    head_then = b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    with served.connect() as sock:
        started = time.monotonic()
        sock.sendall(head_then)
        head, _ = _drip(sock, HEAD_TIMEOUT_S + 5, until_eof=False)
        elapsed = time.monotonic() - started
        answered = time.monotonic()
        rest, closed = _drip(sock, HEAD_TIMEOUT_S + 1, until_eof=True)  # it drips on: closed at once
        head += rest
        closed_after = time.monotonic() - answered
    assert closed_after < 1.0, closed_after  # not the head deadline's second 408 of a kept-alive connection
    assert status(head) == 408 and b"request_timeout" in head and closed, head
    assert HEAD_TIMEOUT_S - 0.2 < elapsed < HEAD_TIMEOUT_S + 3
    before = len(served.log_lines())
    for _ in range(3):
        with served.connect() as sock:
            sock.sendall(head_then)
    time.sleep(0.5)
    assert httpx.get(served.http + "/healthz").status_code == 200
    new = served.log_lines()[before:]
    assert not [line for line in new if "level=error" in line or "Traceback" in line], new


@pytest.mark.parametrize("request_bytes", [
    b"HELLO\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}",
    b"POST /sessions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
])
def test_a_request_that_is_not_http_gets_a_json_400_and_is_closed(served, request_bytes):
    with served.connect() as sock:
        sock.sendall(request_bytes)
        head, body, closed = read_response(sock)
    assert status(head) == 400 and error_code(body) == "bad_request" and closed, (head, body)


def test_an_idle_keep_alive_connection_is_closed(served):
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, closed = read_response(sock, eof_wait_s=0.1)
        assert status(head) == 200 and not closed
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < KEEP_ALIVE_S + 2


@pytest.mark.parametrize("upgrade", [False, True])
def test_a_9_kb_request_target_gets_a_414_that_reaches_the_client(served, upgrade):
    headers = b"Host: x\r\n"
    if upgrade:
        headers += (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
    with served.connect() as sock:
        sock.sendall(b"GET /sessions/s_x/stream?" + b"a" * 9000 + b" HTTP/1.1\r\n" + headers + b"\r\n")
        head, body, closed = read_response(sock)
    assert status(head) == 414 and error_code(body) == "uri_too_long" and closed


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"b" * 40_000 + b"\r\n",  # one header line over 8000 bytes
    b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 10) for i in range(200)),  # too many headers
    b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 7000) for i in range(6)),  # 42 KB in all
])
def test_oversized_headers_get_431(served, headers):
    with served.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        head, body, closed = read_response(sock)
    assert status(head) == 431 and error_code(body) == "headers_too_large" and closed


def test_a_websocket_that_stops_answering_pings_is_closed(served):
    session = httpx.post(f"{served.http}/sessions", json={"model": TEST_MODEL}).json()
    with served.connect() as sock:
        sock.sendall(f"GET /sessions/{session['session_id']}/labels HTTP/1.1\r\nHost: x\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     f"Authorization: Bearer {session['token']}\r\n\r\n".encode())
        started = time.monotonic()
        received = b""
        while True:  # read (the 101, the greeting, pings) but never answer a ping
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
            assert time.monotonic() - started < 15, "the silent WebSocket was not closed"
    assert received.startswith(b"HTTP/1.1 101")
    assert time.monotonic() - started < 2 * PING_S + 5
