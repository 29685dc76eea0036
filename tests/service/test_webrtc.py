"""WebRTC peers as sources: an aiortc client streams the test video; labels come back on its data channel."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from pathlib import Path

import av
import httpx
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, VideoStreamTrack

from tests.service.conftest import run_server
from tests.service.sources import CLIP_S, MODEL, TRUTH, VIDEO, WEIGHTS, results, score, watch_labels

pytestmark = pytest.mark.service

MIN_CORRECT = 0.8
TIME_BASE = fractions.Fraction(1, 90000)


class FileTrack(VideoStreamTrack):
    """The frames of a video file with their own timestamps, sent at real time."""

    def __init__(self, path: Path, seconds: float):
        super().__init__()
        self.container = av.open(str(path))
        self.frames = self.container.decode(video=0)
        self.seconds = seconds
        self.started: float | None = None

    async def recv(self) -> av.VideoFrame:
        frame = next(self.frames, None)
        if frame is None or frame.time >= self.seconds:
            self.stop()
            self.container.close()
            raise MediaStreamError
        if self.started is None:
            self.started = time.monotonic()
        delay = self.started + frame.time - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame.pts, frame.time_base = round(frame.time * 90000), TIME_BASE
        return frame


@pytest.fixture(scope="module")
def motion_server(plumbing_weights):
    with run_server(model=MODEL, weights=WEIGHTS, max_backlog=64, torch_threads=0,
                    rtsp_allow_private_addresses=True) as handle:
        yield handle


def _create(server, **body) -> dict:
    response = httpx.post(f"{server.http}/sessions", json={"model": MODEL, "weights": WEIGHTS, "top_k": 3, **body})
    assert response.status_code == 201, response.text
    return response.json()


async def _connect(session: dict, track: VideoStreamTrack | None, messages: list[dict]) -> RTCPeerConnection:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))  # no STUN: there is no internet here
    channel = pc.createDataChannel("labels")
    channel.on("message", lambda raw: messages.append(json.loads(raw)))
    if track is not None:
        pc.addTrack(track)
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(session["webrtc_url"], json={"sdp": pc.localDescription.sdp, "type": "offer"},
                                   headers={"Authorization": f"Bearer {session['token']}"})
    assert response.status_code == 200, response.text
    await pc.setRemoteDescription(RTCSessionDescription(**response.json()))
    return pc


@pytest.mark.slow
def test_webrtc_labels_match_ground_truth(motion_server):
    truth = json.loads(TRUTH.read_text())
    session = _create(motion_server, source={"type": "webrtc"})
    assert session["ice_servers"] == [] and session["webrtc_url"].startswith("http://")
    messages: list[dict] = []

    async def run():
        labels_url = f"{session['labels_url']}?token={session['token']}"
        watcher = asyncio.create_task(watch_labels(
            labels_url, lambda ms: any(m["type"] == "result" and m["pts"] >= CLIP_S - 0.4 for m in ms), timeout=40))
        pc = await _connect(session, FileTrack(VIDEO, CLIP_S), messages)
        deadline = time.monotonic() + 40
        while not any(m["type"] == "result" and m["pts"] >= CLIP_S - 0.4 for m in messages):
            assert time.monotonic() < deadline, f"{len(results(messages))} results"
            await asyncio.sleep(0.1)
        status = httpx.get(f"{motion_server.http}/sessions/{session['session_id']}",
                           headers={"Authorization": f"Bearer {session['token']}"}).json()
        # A second peer (or a /stream socket) cannot feed the same session.
        async with httpx.AsyncClient() as http:
            second = await http.post(session["webrtc_url"], json={"sdp": pc.localDescription.sdp, "type": "offer"},
                                     headers={"Authorization": f"Bearer {session['token']}"})
        watched = await watcher
        # Deleting the session closes the peer: the data channel says why first.
        httpx.delete(f"{motion_server.http}/sessions/{session['session_id']}",
                     headers={"Authorization": f"Bearer {session['token']}"})
        deadline = time.monotonic() + 10
        while pc.connectionState not in ("closed", "failed") and not any(
                m.get("code") == "session_deleted" for m in messages):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        await pc.close()
        return status, second, watched

    status, second, watched = asyncio.run(run())
    assert messages[0]["type"] == "session" and messages[0]["model"] == MODEL
    assert status["state"] == "streaming" and status["source"]["type"] == "webrtc"
    assert status["source"]["state"] == "connected"
    assert second.status_code == 409 and second.json()["error"]["code"] == "stream_in_use"
    labelled = [(r["pts"], r["labels"][0]["name"] if r["labels"] else None) for r in results(messages)]
    accuracy, scored = score(labelled, truth)
    print(f"WebRTC: {accuracy:.0%} of {scored} labels correct, {len(labelled)} labels")
    assert len(labelled) >= CLIP_S * 5 * 0.8
    assert accuracy >= MIN_CORRECT, labelled
    # The labels socket gets the same results.
    by_seq = {r["seq"]: r["labels"] for r in results(messages)}
    shared = [r for r in results(watched) if r["seq"] in by_seq]
    assert len(shared) >= 0.8 * len(by_seq) and all(by_seq[r["seq"]] == r["labels"] for r in shared)
    assert session["session_id"] not in motion_server.app.state.sessions.hub.streams


def test_webrtc_offer_needs_the_token_and_a_push_session(motion_server):
    session = _create(motion_server)
    offer = {"sdp": "v=0\r\n", "type": "offer"}
    url = session["webrtc_url"]
    assert httpx.post(url, json=offer).json()["error"]["code"] == "token_missing"
    response = httpx.post(url, json=offer, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 403
    auth = {"Authorization": f"Bearer {session['token']}"}
    response = httpx.post(url, json={"sdp": "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "type": "offer"}, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "bad_offer"
    for sdp in ("v=0\u0000\r\nm=video 9 x\r\n", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:bogus\r\n"):
        response = httpx.post(url, json={"sdp": sdp, "type": "offer"}, headers=auth)  # Python's own errors inside
        assert response.status_code == 422 and response.json()["error"]["code"] == "bad_offer"
        message = response.json()["error"]["message"]
        assert "invalid literal" not in message and "'bogus'" not in message, message

    async def data_only_offer() -> str:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.createDataChannel("labels")
        await pc.setLocalDescription(await pc.createOffer())
        await pc.close()
        return pc.localDescription.sdp

    response = httpx.post(url, json={"sdp": asyncio.run(data_only_offer()), "type": "offer"}, headers=auth)
    assert response.status_code == 422 and response.json()["error"]["code"] == "no_video"
    assert session["session_id"] not in motion_server.app.state.sessions.hub.streams

    camera = _create(motion_server, source={"type": "rtsp", "url": "rtsp://127.0.0.1:9/none", "max_reconnects": 0})
    response = httpx.post(camera["webrtc_url"], json=offer, headers={"Authorization": f"Bearer {camera['token']}"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "source_conflict"
    for s in (session, camera):
        httpx.delete(f"{motion_server.http}/sessions/{s['session_id']}", headers={"Authorization": f"Bearer {s['token']}"})
