"""A recording sent faster than real time: the ``block`` policy labels every frame, ``drop_oldest`` does not.

The test video (16 s, 25 fps, the real motion model at 5 fps: 80 model frames) is re-encoded as
one WebM stream (the committed MP4 has its ``moov`` last, so it cannot be streamed) and sent in
64 KiB chunks as fast as the socket takes them, with a backlog of 2 frames. Decoding runs ahead
of inference, so ``drop_oldest`` loses frames; ``block`` stops reading the socket instead.
Images sent faster than real time behave the same (the socket waits for room in the pipe).
"""

from __future__ import annotations

import asyncio
import io
import json
import re

import av
import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.service.conftest import collect_until_close, jpeg, results_of, run_server, stream_url
from tests.service.sources import MODEL, VIDEO, WEIGHTS

pytestmark = [pytest.mark.service, pytest.mark.slow]

MODEL_FRAMES = 80  # 16 s at the model's 5 fps


@pytest.fixture(scope="module")
def webm() -> bytes:
    with av.open(str(VIDEO)) as source:
        frames = [f.to_ndarray(format="rgb24") for f in source.decode(video=0)]
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=25)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())
    return out.getvalue()


@pytest.fixture(scope="module")
def real_server(plumbing_weights):
    with run_server(model=MODEL, weights=WEIGHTS, max_backlog=8, torch_threads=1) as handle:
        yield handle


def create(server, policy: str, **source) -> dict:
    response = httpx.post(server.http + "/sessions", timeout=30, json={
        "model": MODEL, "weights": WEIGHTS, "top_k": 1, "source": {"type": "websocket", **source},
        "backpressure": {"policy": policy, "max_backlog": 2}})
    assert response.status_code == 201, response.text
    return response.json()


async def send_all(server, session, messages: list[bytes | str]) -> list[dict]:
    async with connect(stream_url(server, session), max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session"
        for message in messages:
            await ws.send(message)
        await ws.send(json.dumps({"type": "eos"}))
        return await collect_until_close(ws, timeout=120)


def waited_s(server) -> float:
    text = httpx.get(server.http + "/metrics").text
    return float(re.search(r"^movinet_ingest_wait_seconds_total (\S+)$", text, re.M).group(1))


def chunks(data: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_block_labels_every_frame_of_a_video_sent_as_fast_as_possible(real_server, webm):
    before = waited_s(real_server)
    session = create(real_server, "block", input="video")
    messages = asyncio.run(send_all(real_server, session, chunks(webm)))
    results = results_of(messages)
    assert messages[-1]["type"] == "eos" and messages[-1]["complete"], messages[-3:]
    assert [r["seq"] for r in results] == list(range(1, MODEL_FRAMES + 1))
    assert [r["frame_index"] for r in results] == list(range(MODEL_FRAMES))
    assert all(r["dropped"] == 0 for r in results)
    status = httpx.get(f"{real_server.http}/sessions/{session['session_id']}",
                       headers={"Authorization": f"Bearer {session['token']}"}).json()
    assert (status["frames_received"], status["frames_dropped"]) == (MODEL_FRAMES, 0)
    waited = waited_s(real_server) - before
    print(f"block: {len(results)} labels, 0 dropped; the producer waited {waited:.2f} s")
    assert waited > 0  # it did have to wait: the same stream under drop_oldest loses frames (below)


def test_drop_oldest_loses_frames_of_the_same_video(real_server, webm):
    session = create(real_server, "drop_oldest", input="video")
    results = results_of(asyncio.run(send_all(real_server, session, chunks(webm))))
    print(f"drop_oldest: {len(results)} labels, {results[-1]['dropped']} dropped of {MODEL_FRAMES}")
    assert results[-1]["dropped"] > 0 and len(results) + results[-1]["dropped"] == MODEL_FRAMES
    assert results[-1]["frame_index"] == MODEL_FRAMES - 1  # the newest frames are the ones kept


def test_block_labels_every_image_sent_as_fast_as_possible(real_server):
    rng = np.random.default_rng(5)
    frames = (rng.random((40, 120, 160, 3)) * 255).astype(np.uint8)
    messages: list[bytes | str] = []
    for i, frame in enumerate(frames):
        messages += [json.dumps({"type": "frame", "pts": i / 5}), jpeg(frame)]
    session = create(real_server, "block", input="images")
    results = results_of(asyncio.run(send_all(real_server, session, messages)))
    assert [r["seq"] for r in results] == list(range(1, 41)) and results[-1]["dropped"] == 0
