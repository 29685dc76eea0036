"""Address pinning against DNS rebinding: a camera's or a webhook's name is resolved once per
connection, every address checked, and the connection made to the address checked — the name is
never looked up again by FFmpeg or httpx.

A rebinding DNS is played by replacing ``service.sources.urls.lookup`` (the one resolver the
service uses): names under ``.test`` that no real DNS answers, so that a connection that arrives
proves it went to the pinned address, and a public answer first, loopback after.
"""

from __future__ import annotations

import asyncio
import http.server
import re
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from service.metrics import Metrics
from service.sources import urls
from service.sources.rtsp_guard import RtspRelay
from service.worker.webhooks import WebhookSender
from tests.service.conftest import TEST_MODEL, run_server

PUBLIC = "93.184.216.34"  # a global unicast address (never connected to here)


class Rebinding:
    """Answers ``name`` with ``answers[i]`` on the i-th lookup (the last one ever after)."""

    def __init__(self, name: str, *answers: list[str]) -> None:
        self.name, self.answers, self.calls = name, answers, 0
        self.real = urls.lookup

    def __call__(self, host: str, port: int) -> list[str]:
        if host != self.name:
            return self.real(host, port)
        self.calls += 1
        return self.answers[min(self.calls, len(self.answers)) - 1]


class Listener:
    """A TCP port on 127.0.0.2 that records what each connection sends first, then closes it.

    Not on 127.0.0.1: a free port there may be the bus port (port + 10000) of a test cluster's
    killed node, which its peers keep dialling (64 connections of Redis Cluster bus messages once
    landed here as if FFmpeg had followed a redirect)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.2", 0))
        self.port = self.sock.getsockname()[1]
        self.first_bytes: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    self.first_bytes.append(conn.recv(4096))
                except OSError:
                    self.first_bytes.append(b"")


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.sock.close()


@pytest.fixture
def hook() -> Iterator[tuple[http.server.ThreadingHTTPServer, list[tuple[str, bytes]]]]:
    received: list[tuple[str, bytes]] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            received.append((self.headers["Host"], self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, received
    server.shutdown()


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- RTSP ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["rtsp", "rtsps"])
def test_ffmpeg_connects_to_the_checked_address_not_the_name(plumbing_weights, listener, monkeypatch, scheme):
    resolver = Rebinding("cam.pinned.test", ["127.0.0.2"])
    monkeypatch.setattr(urls, "lookup", resolver)
    with run_server(rtsp_allow_private_addresses=True) as server:
        response = httpx.post(server.http + "/sessions", timeout=30, json={
            "model": TEST_MODEL, "source": {"type": "rtsp", "url": f"{scheme}://cam.pinned.test:{listener.port}/x"}})
        assert response.status_code == 201, response.text
        # No real DNS knows the name: a connection at all is one to the pinned address.
        assert wait_for(lambda: listener.first_bytes), "FFmpeg never connected"
    first = listener.first_bytes[0]
    if scheme == "rtsp":  # FFmpeg's request, through the relay (its loopback port in the URI)
        assert re.match(rb"OPTIONS rtsp://127\.0\.0\.1:\d+/x RTSP/1\.0\r\n", first), first[:80]
    else:  # the relay's TLS ClientHello, with the name as SNI
        assert first[:1] == b"\x16" and b"cam.pinned.test" in first
    assert resolver.calls >= 2  # at the create, and again for the connection


def test_a_rebinding_camera_name_cannot_reach_loopback(plumbing_weights, listener, monkeypatch):
    resolver = Rebinding("cam.rebind.test", [PUBLIC], ["127.0.0.2"])
    monkeypatch.setattr(urls, "lookup", resolver)
    with run_server() as server:  # the default: public addresses only
        response = httpx.post(server.http + "/sessions", timeout=30, json={
            "model": TEST_MODEL, "source": {"type": "rtsp", "url": f"rtsp://cam.rebind.test:{listener.port}/x"}})
        assert response.status_code == 201, response.text  # the create's lookup said public
        session = response.json()

        def source() -> dict:
            return httpx.get(f"{server.http}/sessions/{session['session_id']}",
                             params={"token": session["token"]}, timeout=30).json()["source"]

        assert wait_for(lambda: source()["last_error"] is not None)
        status = source()
    assert "127.0.0.2 is private, loopback" in status["last_error"]
    time.sleep(0.3)
    assert listener.first_bytes == []  # nothing ever reached the loopback port


class RedirectingCamera:
    """An RTSP server on 127.0.0.1 that answers every request with a 302 to ``location``."""

    def __init__(self, location: str) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.location = location
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(4096)
                cseq = re.search(rb"CSeq: *(\d+)", request)
                conn.sendall(b"RTSP/1.0 302 Moved Temporarily\r\nCSeq: " + (cseq.group(1) if cseq else b"1")
                             + b"\r\nLocation: " + self.location.encode() + b"\r\n\r\n")
                time.sleep(0.5)


def test_a_camera_redirect_is_not_followed(plumbing_weights, listener):
    # Private addresses allowed, so that it is the redirect itself that is refused, wherever it goes.
    camera = RedirectingCamera(f"rtsp://admin:pw@127.0.0.2:{listener.port}/internal")
    try:
        with run_server(rtsp_allow_private_addresses=True) as server:
            response = httpx.post(server.http + "/sessions", timeout=30, json={
                "model": TEST_MODEL, "source": {"type": "rtsp", "url": f"rtsp://127.0.0.1:{camera.port}/cam"}})
            assert response.status_code == 201, response.text
            session = response.json()

            def source() -> dict:
                return httpx.get(f"{server.http}/sessions/{session['session_id']}",
                                 params={"token": session["token"]}, timeout=30).json()["source"]

            assert wait_for(lambda: source()["last_error"] is not None)
            error = source()["last_error"]
    finally:
        camera.sock.close()
    assert "answered 302" in error and "redirects are not followed" in error
    assert "pw" not in error and "***@127.0.0.2" in error  # the Location's credentials redacted
    time.sleep(0.3)
    assert listener.first_bytes == []  # FFmpeg never connected where the camera pointed


def test_the_relay_points_udp_at_the_checked_address_and_passes_interleaved_rtp():
    target = urls.parse_url("rtsp://cam.example.org/live")
    with RtspRelay(target, "203.0.113.5", timeout_s=1.0) as relay:
        setup = (b"RTSP/1.0 200 OK\r\nCSeq: 4\r\nTransport: RTP/AVP;unicast;client_port=5000-5001;"
                 b"source=127.0.0.1;server_port=6000-6001\r\nSession: 12\r\n\r\n")
        rtp = b"$\x00\x00\x03abc"
        passed, rest = relay._check(setup + rtp + b"$\x01\x00\x09par")  # the last frame is not whole yet
    assert rest == b"$\x01\x00\x09par"
    assert b"Transport: RTP/AVP;unicast;client_port=5000-5001;server_port=6000-6001;source=203.0.113.5\r\n" \
        in passed
    assert passed.endswith(b"Session: 12\r\n\r\n" + rtp)
    assert relay.url.startswith("rtsp://127.0.0.1:") and relay.url.endswith("/live")


# --- webhooks -----------------------------------------------------------------------------------------


def send_one(metrics: Metrics, url: str, allow_private: bool) -> WebhookSender:
    """One batch through a real sender; returns once it was sent, refused or failed."""
    sender = WebhookSender(metrics, allow_private=allow_private)

    def outcomes() -> float:
        return sum(metrics.webhooks.labels(o)._value.get() for o in ("sent", "refused", "failed"))

    async def scenario() -> None:
        sender.send("s_1", url, [{"phase": "start", "label": "x"}])
        for _ in range(200):
            if outcomes():
                break
            await asyncio.sleep(0.05)
        await sender.stop()

    asyncio.run(scenario())
    return sender


def test_a_webhook_is_posted_to_the_checked_address_with_the_names_host_header(hook, monkeypatch):
    server, received = hook
    port = server.server_address[1]
    resolver = Rebinding("hooks.pinned.test", ["127.0.0.1"])
    monkeypatch.setattr(urls, "lookup", resolver)
    sender = send_one(Metrics(), f"http://hooks.pinned.test:{port}/hook", allow_private=True)
    assert sender.sent == 1 and len(received) == 1
    assert received[0][0] == f"hooks.pinned.test:{port}"  # the virtual host is the name
    assert b'"session_id":"s_1"' in received[0][1]
    assert resolver.calls == 1  # httpx never looked the name up (no real DNS answers it anyway)


def test_a_rebinding_webhook_name_cannot_reach_loopback(plumbing_weights, hook, monkeypatch):
    server, received = hook
    port = server.server_address[1]
    url = f"http://hooks.rebind.test:{port}/hook"
    resolver = Rebinding("hooks.rebind.test", [PUBLIC], ["127.0.0.1"])
    monkeypatch.setattr(urls, "lookup", resolver)
    with run_server() as strict:  # the create checks the first answer: public
        created = httpx.post(strict.http + "/sessions", timeout=30,
                             json={"model": TEST_MODEL, "events": {"webhook_url": url}})
    assert created.status_code == 201, created.text
    metrics = Metrics()
    sender = send_one(metrics, url, allow_private=False)  # the send's lookup answers loopback: refused
    assert received == [] and sender.sent == 0
    assert metrics.webhooks.labels("refused")._value.get() == 1
