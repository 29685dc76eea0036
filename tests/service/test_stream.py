"""Frames in, labels out over real WebSockets: pts, labels equal to an in-process run, isolation."""

from __future__ import annotations

import asyncio
import json

import av
import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from service.sources.frames import Resampler, fit_frame
from tests.service.conftest import (
    collect_until_close,
    encode_video,
    errors_of,
    fitted,
    moving_frames,
    reference_probs,
    results_of,
    send_images,
    stream_url,
)

pytestmark = pytest.mark.service


def assert_matches_reference(results, expected: np.ndarray) -> None:
    assert len(results) == len(expected)
    for result, probs in zip(results, expected, strict=True):
        ids = [label["id"] for label in result["labels"]]
        top = np.argsort(-probs)
        # The best label is the model's best (unless two scores tie within rounding).
        assert ids[0] == top[0] or probs[ids[0]] == pytest.approx(probs[top[0]], abs=2e-3), (result, probs)
        for label in result["labels"]:
            assert label["score"] == pytest.approx(float(probs[label["id"]]), abs=2e-3)


async def _stream_images(server, session, frames, pts, pace_s=0.01):
    async with connect(stream_url(server, session)) as ws:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "session" and hello["frame_rate"] == 5.0
        await send_images(ws, frames, pts, pace_s=pace_s)
        await ws.send(json.dumps({"type": "eos"}))
        messages = await collect_until_close(ws)
        return messages, ws.close_code


def test_image_stream_labels_match_the_model_and_pts_line_up(server):
    loaded = server.loaded()
    frames = moving_frames(36, direction="right", seed=1)
    pts = [1.0 + i / 10 for i in range(36)]  # 10 fps in, the model runs at 5 fps: every 2nd image
    session = server.create(top_k=3)
    messages, code = asyncio.run(_stream_images(server, session, frames, pts))
    assert code == 1000
    assert messages[-1] == {"type": "eos", "last_seq": 18, "complete": True}
    results = results_of(messages)
    assert not errors_of(messages)
    assert [r["frame_index"] for r in results] == list(range(18))
    assert [r["pts"] for r in results] == pytest.approx([1.0 + k / 5 for k in range(18)])
    assert [r["seq"] for r in results] == list(range(1, 19))
    assert all(r["dropped"] == 0 and len(r["labels"]) == 3 for r in results)
    expected = reference_probs(loaded, [fitted(loaded, frames[2 * k]) for k in range(18)])
    assert_matches_reference(results, expected)
    assert len({json.dumps(r["labels"]) for r in results}) > 9  # labels depend on the input


def test_a_tumbling_session_gets_the_labels_of_its_reference_stream(server):
    """One state per session reset every `frames` frames, the last label of a window held in the
    first half of the next: the labels the model gives through model.streaming.TumblingStream."""
    loaded = server.loaded()
    frames = moving_frames(20, direction="left", seed=3)
    session = server.create(top_k=3, window={"policy": "tumbling", "frames": 6})
    messages, code = asyncio.run(_stream_images(server, session, frames, [i / 5 for i in range(20)]))
    assert code == 1000 and not errors_of(messages)
    results = results_of(messages)
    assert [r["seq"] for r in results] == list(range(1, 21))
    expected = reference_probs(loaded, [fitted(loaded, frame) for frame in frames], window=6, policy="tumbling")
    assert_matches_reference(results, expected)
    held = [i for i in range(6, 20) if i % 6 < 2]  # frames 7-8, 13-14, 19-20: the window before's last label
    assert all(results[i]["labels"] == results[i - 1 - i % 6]["labels"] for i in held)


@pytest.mark.parametrize("container", ["webm", "fmp4"])
def test_video_stream_chunks_are_decoded_incrementally(server, container):
    loaded = server.loaded()
    frames = moving_frames(45, width=176, height=144, direction="down", seed=2)
    data = encode_video(frames, fps=15, container=container)
    session = server.create(top_k=2)

    async def run():
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            for i in range(0, len(data), 1500):  # like MediaRecorder chunks
                await ws.send(data[i : i + 1500])
                await asyncio.sleep(0.002)
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws), ws.close_code

    messages, code = asyncio.run(run())
    assert code == 1000 and not errors_of(messages)
    results = results_of(messages)
    # The reference: decode the same bytes, keep one frame per model slot by pts, fit it the same way.
    resampler, chosen, pts = Resampler(loaded.frame_rate), [], []
    with av.open(__import__("io").BytesIO(data)) as source:
        for frame in source.decode(video=0):
            slots = resampler.push(float(frame.pts * frame.time_base))
            for _ in slots or []:
                chosen.append(fit_frame(frame, loaded.input_size, loaded.short_side))
                pts.append(float(frame.pts * frame.time_base))
    assert len(results) == len(chosen) == 15  # 3 s at 5 fps
    assert [r["pts"] for r in results] == pytest.approx(pts)
    assert [r["frame_index"] for r in results] == list(range(15))
    assert_matches_reference(results, reference_probs(loaded, chosen))


def test_raw_h264_without_timestamps_uses_the_declared_frame_rate(server):
    frames = moving_frames(30, direction="left", seed=3)
    data = encode_video(frames, fps=10, container="h264")
    session = server.create(source={"type": "websocket", "input": "video", "frame_rate": 10})

    async def run():
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            await ws.send(data)
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws)

    results = results_of(asyncio.run(run()))
    assert [r["pts"] for r in results] == pytest.approx([k / 5 for k in range(15)])


def test_two_sessions_in_parallel_get_their_own_labels(plumbing_weights):
    """Batched together in one forward, each session still equals its own single-stream run.

    ``batch_wait_ms`` (the setting under test) lets the worker wait for the other session's frame,
    so that the forwards really hold both sessions."""
    from tests.service.conftest import run_server

    with run_server(batch_wait_ms=40, max_backlog=64) as server:
        loaded = server.loaded()
        videos = [moving_frames(30, direction="right", seed=4), moving_frames(30, direction="up", seed=5)]
        pts = [i / 5 for i in range(30)]
        sessions = [server.create(top_k=4), server.create(top_k=4)]

        async def run():
            return await asyncio.gather(*(_stream_images(server, s, v, pts, pace_s=0.02)
                                          for s, v in zip(sessions, videos, strict=True)))

        outcomes = asyncio.run(run())
        histogram = {s.name: s.value for s in server.app.state.metrics.batch_size.collect()[0].samples
                     if s.labels.get("model") == loaded.name}
    for (messages, code), video in zip(outcomes, videos, strict=True):
        assert code == 1000
        results = results_of(messages)
        assert_matches_reference(results, reference_probs(loaded, [fitted(loaded, f) for f in video]))
    labels = [[r["labels"] for r in results_of(m)] for m, _ in outcomes]
    assert all(a != b for a, b in zip(*labels, strict=True))
    forwards, rows = histogram["movinet_batch_size_count"], histogram["movinet_batch_size_sum"]
    assert rows == 60 and forwards < 45  # every frame once, most forwards with both sessions


def test_labels_socket_sees_the_same_results(server):
    frames = moving_frames(20, seed=6)
    session = server.create()

    async def run():
        async with connect(stream_url(server, session, "labels")) as watcher:
            hello = json.loads(await watcher.recv())
            assert hello["type"] == "session"
            messages, _ = await _stream_images(server, session, frames, [i / 5 for i in range(20)])
            watched = []
            while len(watched) < len(results_of(messages)):
                watched.append(json.loads(await asyncio.wait_for(watcher.recv(), 10)))
            return results_of(messages), watched

    produced, watched = asyncio.run(run())
    assert watched == produced


def test_resume_replays_results_after_a_seq(server):
    frames = moving_frames(10, seed=7)
    session = server.create()
    messages, _ = asyncio.run(_stream_images(server, session, frames, [i / 5 for i in range(10)]))
    produced = results_of(messages)

    async def resume():
        async with connect(stream_url(server, session, "labels", after_seq=6)) as ws:
            await ws.recv()
            return [json.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(4)]

    assert asyncio.run(resume()) == produced[6:]


def test_a_second_stream_continues_the_session_frame_grid(server):
    session = server.create()
    first, _ = asyncio.run(_stream_images(server, session, moving_frames(5, seed=8), [i / 5 for i in range(5)]))
    second, _ = asyncio.run(_stream_images(server, session, moving_frames(5, seed=9), [i / 5 for i in range(5)]))
    assert [r["frame_index"] for r in results_of(first)] == [0, 1, 2, 3, 4]
    assert [r["frame_index"] for r in results_of(second)] == [5, 6, 7, 8, 9]
    assert [r["seq"] for r in results_of(second)] == [6, 7, 8, 9, 10]


def test_state_checkpoints_go_to_the_store_as_bytes(plumbing_weights):
    """Every K frames the worker writes the session's state bytes (a safetensors checkpoint)."""
    from service.worker.runner import decode_checkpoint
    from tests.service.conftest import run_server

    with run_server(checkpoint_every=4, max_backlog=64) as server:
        session = server.create()
        asyncio.run(_stream_images(server, session, moving_frames(10, seed=10), [i / 5 for i in range(10)]))
        store = server.app.state.store
        future = asyncio.run_coroutine_threadsafe(store.streams.checkpoint(session["session_id"]),
                                                  server.app.state.loop)
        seq, data = future.result(5)
    assert seq == 8
    slot, state, smoothed = decode_checkpoint(data)
    assert slot.frames_seen == 8 and slot.window == server.loaded().clip_frames and state is None
    assert slot.states[0]["state_head_pool_buffer"].shape[0] == 1
    with pytest.raises(ValueError):
        decode_checkpoint(b"not a checkpoint")


def test_the_browser_page_is_served(server):
    import httpx

    response = httpx.get(server.http + "/")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    assert "/sessions" in response.text


def test_a_client_that_closes_right_after_eos_frees_the_session_at_once(plumbing_weights):
    """The server stops waiting to flush results when the socket is gone: a new producer can
    attach straight away (before, the handler sat on the producer slot for a minute)."""
    from tests.service.conftest import run_server

    with run_server(batch_wait_ms=250, max_backlog=64) as slow:  # results lag: eos has to wait
        _closes_right_after_eos(slow)


def _closes_right_after_eos(server) -> None:
    session = server.create()

    async def run() -> str:
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            await send_images(ws, moving_frames(40, seed=21), [i / 5 for i in range(40)])  # results still due
            await ws.send(json.dumps({"type": "eos"}))
        await asyncio.sleep(0.5)
        async with connect(stream_url(server, session)) as again:
            return json.loads(await asyncio.wait_for(again.recv(), 5))["type"]

    assert asyncio.run(run()) == "session"


def test_action_events_reach_the_sockets_and_the_events_route(server):
    """Per-frame labels become action segments: `event` messages on the socket, and the same
    events from GET /sessions/{id}/events."""
    session = server.create(events={"enter_score": 0.2, "exit_score": 0.1, "enter_frames": 2, "exit_frames": 1})
    frames = np.concatenate([moving_frames(15, direction="right", seed=21), moving_frames(15, direction="up", seed=22)])
    messages, code = asyncio.run(_stream_images(server, session, frames, [i / 5 for i in range(30)], pace_s=0.02))
    assert code == 1000
    events = [m for m in messages if m["type"] == "event"]
    assert events and events[0]["phase"] == "start" and all(e["phase"] in ("start", "update", "end") for e in events)
    got = httpx.get(f"{server.http}/sessions/{session['session_id']}/events", params={"token": session["token"]})
    assert got.status_code == 200 and got.json()["events"] == events


def test_events_are_posted_to_the_sessions_webhook(plumbing_weights):
    """The events also go to a webhook (a local HTTP server here, so private addresses are allowed
    for this test); a webhook on a private address is refused by default, and so is a file: URL."""
    import http.server
    import threading
    import time

    from tests.service.conftest import run_server

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{hook.server_address[1]}/hook?secret=s3"
    events_option = {"enter_score": 0.2, "exit_score": 0.1, "enter_frames": 2, "exit_frames": 1}
    try:
        with run_server(rtsp_allow_private_addresses=True) as server:
            session = server.create(events={**events_option, "webhook_url": url})
            frames = np.concatenate([moving_frames(12, direction="right", seed=31),
                                     moving_frames(12, direction="up", seed=32)])
            asyncio.run(_stream_images(server, session, frames, [i / 5 for i in range(24)], pace_s=0.02))
            stored = httpx.get(f"{server.http}/sessions/{session['session_id']}/events",
                               params={"token": session["token"]}).json()["events"]
            status = httpx.get(f"{server.http}/sessions/{session['session_id']}",
                               params={"token": session["token"]}).json()
            deadline = time.monotonic() + 10
            while sum(len(r["events"]) for r in received) < len(stored) and time.monotonic() < deadline:
                time.sleep(0.1)
        with run_server() as strict:
            refused = httpx.post(f"{strict.http}/sessions", json={"model": "movinet_test_stream",
                                                                   "events": {"webhook_url": url}})
            not_http = httpx.post(f"{strict.http}/sessions", json={"model": "movinet_test_stream",
                                                                    "events": {"webhook_url": "file:///etc/passwd"}})
    finally:
        hook.shutdown()
    assert stored and [e for r in received for e in r["events"]] == stored
    assert all(r["session_id"] == session["session_id"] for r in received)
    assert "s3" not in json.dumps(status["options"])  # the secret query value is never returned
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "address_not_allowed"
    assert not_http.status_code == 422 and not_http.json()["error"]["code"] == "url_not_allowed"
