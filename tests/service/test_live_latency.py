"""A live WebM stream, sent as a browser's recorder sends it, gets its first label within a frame or so.

The stream is VP8 in WebM, 400 x 400 at 5 fps, one cluster per frame, and each frame's new bytes
(its block, and the header before the first) are sent at that frame's time, as a live muxer
flushes them. The decoder must not wait for FFmpeg to probe seconds of input before it yields the
first frame (``service/sources/decode.py`` opens with ``probesize=4096, analyzeduration=0,
fpsprobesize=0``; it once took 5.3 s), and must not decode a burst later (``dropped`` stays 0).
"""

from __future__ import annotations

import asyncio
import io
import json
import time

import av
import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.service.conftest import stream_url

pytestmark = pytest.mark.service

FPS, SIZE, FRAMES = 5, 400, 15
FIRST_LABEL_S = 1.0  # one frame time (0.2 s) plus decoding and inference, with slack for a loaded machine


def live_webm_chunks(frames: int = FRAMES) -> list[bytes]:
    """A VP8 WebM cut where a live muxer flushes: chunk ``i`` ends with frame ``i``'s block."""
    rng = np.random.default_rng(7)
    scene = (rng.random((SIZE // 8 * 2, SIZE // 8 * 2, 3)) * 255).astype(np.uint8).repeat(8, 0).repeat(8, 1)
    out = io.BytesIO()
    payloads = []
    with av.open(out, "w", format="webm", options={"live": "1", "cluster_size_limit": "1"}) as container:
        stream = container.add_stream("libvpx", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[4 * i : 4 * i + SIZE, 4 * i : 4 * i + SIZE]),
                                               format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                payloads.append(bytes(packet))
                container.mux(packet)
        for packet in stream.encode():
            payloads.append(bytes(packet))
            container.mux(packet)
    data = out.getvalue()
    assert len(payloads) == frames  # no encoder lag: one packet per frame, in order
    chunks, start = [], 0
    for payload in payloads:  # PyAV's muxer writes a block one packet late: cut the file instead
        end = data.index(payload, start) + len(payload)
        chunks.append(data[start:end])
        start = end
    chunks[-1] += data[start:]
    return chunks


def test_a_live_webm_stream_gets_its_first_label_within_a_second(server):
    chunks = live_webm_chunks()
    session = server.create(top_k=1, source={"type": "websocket", "input": "video"})

    async def run() -> tuple[float, list[dict]]:
        async with connect(stream_url(server, session), max_size=None) as ws:
            assert json.loads(await ws.recv())["type"] == "session"
            results: list[dict] = []
            first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

            async def receive() -> None:
                async for raw in ws:
                    message = json.loads(raw)
                    if message["type"] == "result":
                        results.append(message)
                        if not first.done():
                            first.set_result(time.monotonic())

            receiver = asyncio.create_task(receive())
            started = time.monotonic()
            for i, chunk in enumerate(chunks):  # frame i's bytes at frame i's time
                await asyncio.sleep(max(0.0, started + i / FPS - time.monotonic()))
                await ws.send(chunk)
            first_label_s = await asyncio.wait_for(first, 10) - started
            await ws.send(json.dumps({"type": "eos"}))
            await asyncio.wait_for(receiver, 30)
            return first_label_s, results

    first_label_s, results = asyncio.run(run())
    print(f"live WebM: first label {first_label_s * 1000:.0f} ms after the first bytes; {len(results)} labels")
    assert first_label_s < FIRST_LABEL_S
    assert [r["frame_index"] for r in results] == list(range(FRAMES))
    assert all(r["dropped"] == 0 for r in results)
