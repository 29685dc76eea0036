"""RTSP cameras as sources: a real RTSP server on loopback serving the test video.

The server pulls the camera, and the labels on the labels socket follow the video's ground
truth; killing and restarting the camera makes the session reconnect and go on; refused URLs
get 4xx JSON errors and make no session; credentials never come back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.sources.urls import SourceRefused, address_allowed, parse_url, redact
from tests.service.conftest import run_server
from tests.service.sources import (
    CLIP_S,
    MODEL,
    TRUTH,
    VIDEO,
    WEIGHTS,
    RtspCamera,
    free_port,
    gst_rtsp_available,
    require,
    results,
    score,
    watch_labels,
)

MIN_CORRECT = 0.8


# --- URL checks (no server) ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["file:///etc/passwd", "http://example.com/x", "rtmp://example.com/live",
                                 "rtsp:///nohost", "rtsp://exa mple.com/x", "rtsp://example.com:99999/x",
                                 "rtsp://a\\@example.com/x", "rtsp://example.com/\nx", "concat:rtsp://x|file:y",
                                 "subfile,,start,0,end,0,,:rtsp://example.com/"])
def test_parse_url_refuses_other_protocols_and_odd_urls(url):
    with pytest.raises(SourceRefused) as refused:
        parse_url(url)
    assert refused.value.code == "url_not_allowed"


def test_parse_url_keeps_credentials_for_ffmpeg_only():
    target = parse_url("RTSP://admin:p%40ss@cam.example.com/stream1?channel=1&password=hunter2")
    assert (target.scheme, target.host, target.port) == ("rtsp", "cam.example.com", 554)
    assert target.with_host("203.0.113.7") == "rtsp://admin:p%40ss@203.0.113.7:554/stream1?channel=1&password=hunter2"
    assert target.with_host("2001:db8::1").startswith("rtsp://admin:p%40ss@[2001:db8::1]:554/")
    assert "p%40ss" not in target.redacted and "hunter2" not in target.redacted
    assert target.redacted == "RTSP://***@cam.example.com/stream1?channel=1&password=***"
    assert parse_url("rtsps://cam.example.com/x").port == 322


def test_redact_hides_credentials_in_error_messages():
    text = "OSError: [Errno 111] Connection refused: 'rtsp://user:secret@198.51.100.1:554/x?token=abc'"
    assert "secret" not in redact(text) and "abc" not in redact(text) and "user" not in redact(text)
    assert "198.51.100.1:554/x" in redact(text)


@pytest.mark.parametrize("address,allowed", [
    ("8.8.8.8", True), ("2001:4860:4860::8888", True), ("127.0.0.1", False), ("10.1.2.3", False),
    ("192.168.1.10", False), ("172.16.0.1", False), ("169.254.169.254", False), ("100.64.0.1", False),
    ("0.0.0.0", False), ("::1", False), ("fe80::1%eth0", False), ("fd00::1", False), ("::ffff:127.0.0.1", False),
    ("224.0.0.1", False), ("255.255.255.255", False)])
def test_only_public_addresses_are_allowed_by_default(address, allowed):
    assert address_allowed(address) is allowed


# --- the API refuses ---------------------------------------------------------------------------


@pytest.mark.service
@pytest.mark.parametrize("url,code", [
    ("file:///etc/passwd", "url_not_allowed"),
    ("http://127.0.0.1/x", "url_not_allowed"),
    ("rtsp://127.0.0.1:8554/test", "address_not_allowed"),
    ("rtsp://localhost/x", "address_not_allowed"),
    ("rtsp://[::1]/x", "address_not_allowed"),
    ("rtsp://2130706433/x", "address_not_allowed"),  # 127.0.0.1 as one number
    ("rtsp://169.254.169.254/latest", "address_not_allowed"),
    ("rtsp://admin:topsecret@10.0.0.8/x", "address_not_allowed"),
])
def test_refused_urls_get_a_4xx_and_make_no_session(server, url, code):
    before = _listed(server)
    response = httpx.post(f"{server.http}/sessions", json={"model": "movinet_test_stream",
                                                          "source": {"type": "rtsp", "url": url}})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert "topsecret" not in response.text
    # The server is shared: another test's late session may appear meanwhile, but none with a
    # camera, neither in its record (options) nor as a puller (source).
    made = {sid: status for sid, status in _listed(server).items() if sid not in before}
    assert all(status["options"]["source"]["type"] != "rtsp" and status["source"] is None
               for status in made.values()), made


def _listed(server) -> dict[str, dict]:
    """Every session the server lists, by id (all pages)."""
    sessions, cursor = {}, None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{server.http}/sessions", params=params).json()
        sessions.update({s["session_id"]: s for s in page["sessions"]})
        if not (cursor := page["next_cursor"]):
            return sessions


@pytest.mark.service
def test_bad_source_options_are_invalid_requests(server):
    for source in ({"type": "rtsp"}, {"type": "rtsp", "url": "rtsp://example.com/x", "transport": "http"},
                   {"type": "rtsp", "url": "rtsp://example.com/x", "read_timeout_s": 0}, {"type": "camera"}):
        response = httpx.post(f"{server.http}/sessions", json={"model": "movinet_test_stream", "source": source})
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", source


# --- a real camera -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def camera():
    require(gst_rtsp_available(), "gst-rtsp-server (python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer plugins)")
    handle = RtspCamera(VIDEO).start()
    yield handle
    handle.kill()


@pytest.fixture(scope="module")
def rtsp_server(plumbing_weights):
    with run_server(model=MODEL, weights=WEIGHTS, max_backlog=64, torch_threads=0,
                    rtsp_allow_private_addresses=True) as handle:
        yield handle


def _create(server, url: str, **source) -> dict:
    response = httpx.post(f"{server.http}/sessions", json={
        "model": MODEL, "weights": WEIGHTS, "top_k": 3, "source": {"type": "rtsp", "url": url, **source}})
    assert response.status_code == 201, response.text
    return response.json()


def _status(server, session) -> dict:
    response = httpx.get(f"{server.http}/sessions/{session['session_id']}",
                         headers={"Authorization": f"Bearer {session['token']}"})
    assert response.status_code == 200, response.text
    return response.json()


def _labels_url(session) -> str:
    return f"{session['labels_url']}?token={session['token']}"


def _top(result: dict) -> str | None:
    return result["labels"][0]["name"] if result["labels"] else None


@pytest.mark.service
@pytest.mark.slow
def test_rtsp_labels_match_ground_truth(rtsp_server, camera, caplog):
    truth = json.loads(TRUTH.read_text())
    url = camera.url.replace("rtsp://", "rtsp://viewer:s3cret@")
    with caplog.at_level(logging.INFO, logger="service"):
        session = _create(rtsp_server, url, transport="udp")
        assert "s3cret" not in json.dumps(session)

        async def run():
            done = lambda ms: any(m["type"] == "result" and m["pts"] >= CLIP_S for m in ms)  # noqa: E731
            return await watch_labels(_labels_url(session), done, timeout=40)

        started = time.monotonic()
        messages = asyncio.run(run())
        elapsed = time.monotonic() - started
        status = _status(rtsp_server, session)

        async def second_producer():  # the camera is the session's one producer
            async with connect(f"{session['frames_url']}?token={session['token']}") as ws:
                error = json.loads(await ws.recv())
                with pytest.raises(ConnectionClosed):
                    await ws.recv()
            return error["code"], ws.close_code

        assert asyncio.run(second_producer()) == ("stream_in_use", 4409)
        httpx.delete(f"{rtsp_server.http}/sessions/{session['session_id']}",
                     headers={"Authorization": f"Bearer {session['token']}"})
    assert not caplog.records or all("s3cret" not in r.getMessage() for r in caplog.records)
    assert "s3cret" not in json.dumps(status)
    source = status["source"]
    assert source["type"] == "rtsp" and source["state"] == "streaming" and source["transport"] == "udp"
    assert source["url"] == camera.url.replace("rtsp://", "rtsp://***@")
    assert status["options"]["source"]["url"] == source["url"]
    assert status["state"] == "streaming"
    assert any(m["type"] == "source" and m["state"] == "streaming" for m in messages) or \
        messages[0].get("source", {}).get("state") == "streaming"
    labelled = [(r["pts"], _top(r)) for r in results(messages) if r["pts"] < CLIP_S]
    accuracy, scored = score(labelled, truth)
    print(f"RTSP/UDP: {accuracy:.0%} of {scored} labels correct, {len(labelled)} labels in {elapsed:.1f} s")
    assert len(labelled) >= CLIP_S * 5 - 3  # 5 fps: nearly every model frame of the clip
    assert accuracy >= MIN_CORRECT, labelled


@pytest.mark.service
@pytest.mark.slow
def test_rtsp_session_reconnects_when_the_camera_restarts(rtsp_server, camera):
    truth = json.loads(TRUTH.read_text())
    session = _create(rtsp_server, camera.url, transport="tcp", read_timeout_s=2, reconnect_delay_s=0.2,
                      max_reconnect_delay_s=0.5)
    url = _labels_url(session)

    async def run():
        messages: list[dict] = []

        def first_part(ms):
            return any(m["type"] == "result" and m["pts"] >= 2.0 for m in ms)

        messages += await watch_labels(url, first_part, timeout=30)
        camera.kill()  # the camera dies...
        restarted = threading.Timer(1.5, camera.start)  # ...and comes back on the same port
        restarted.start()

        def new_stream_done(ms):  # results after a reconnect start again at pts ~0
            pts = [m["pts"] for m in ms if m["type"] == "result"]
            drops = [i for i in range(1, len(pts)) if pts[i] < pts[i - 1] - 1.0]
            return bool(drops) and pts[-1] >= CLIP_S

        messages += await watch_labels(url, lambda ms: new_stream_done(results(messages) + ms), timeout=45)
        restarted.join()
        return messages

    messages = asyncio.run(run())
    status = _status(rtsp_server, session)
    events = [m for m in messages if m["type"] == "source"]
    assert any(e["state"] == "reconnecting" and e["error"] for e in events), events
    assert status["source"]["reconnects"] >= 1 and status["source"]["last_error"]
    assert status["source"]["state"] == "streaming"
    all_results = results(messages)
    pts = [r["pts"] for r in all_results]
    restart = next(i for i in range(1, len(pts)) if pts[i] < pts[i - 1] - 1.0)
    after = all_results[restart:]
    assert after[0]["frame_index"] > all_results[restart - 1]["frame_index"]  # the session's grid goes on
    labelled = [(r["pts"], _top(r)) for r in after if r["pts"] < CLIP_S]
    accuracy, scored = score(labelled, truth)
    print(f"after the reconnect: {accuracy:.0%} of {scored} labels correct; events {[e['state'] for e in events]}")
    assert accuracy >= MIN_CORRECT, labelled

    # DELETE stops the pull: the puller is gone from the session's producers at once.
    httpx.delete(f"{rtsp_server.http}/sessions/{session['session_id']}",
                 headers={"Authorization": f"Bearer {session['token']}"})
    assert session["session_id"] not in rtsp_server.app.state.sessions.hub.streams
    deadline = time.monotonic() + 5
    while any(t.name == f"rtsp-{session['session_id']}" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the puller thread did not stop"
        time.sleep(0.1)


@pytest.mark.service
def test_unreachable_camera_fails_after_max_reconnects(rtsp_server):
    session = _create(rtsp_server, f"rtsp://127.0.0.1:{free_port()}/none", open_timeout_s=1, reconnect_delay_s=0.1,
                      max_reconnects=2)
    deadline = time.monotonic() + 15
    while (status := _status(rtsp_server, session))["source"]["state"] != "failed":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["source"]["reconnects"] == 2 and "refused" in status["source"]["last_error"].lower()
    assert status["state"] == "idle"
    httpx.delete(f"{rtsp_server.http}/sessions/{session['session_id']}",
                 headers={"Authorization": f"Bearer {session['token']}"})
