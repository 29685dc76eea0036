"""With the bundled model, the labels that come back follow the ground truth of the test video.

A label is correct for a model frame if it names the motion of that moment; the first
window after each change (and after the start) is not scored, since a stream
model needs a few frames to see a new motion.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import av
import pytest
from websockets.asyncio.client import connect

from tests.service.conftest import collect_until_close, results_of, run_server, stream_url

pytestmark = [pytest.mark.service, pytest.mark.slow]

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VIDEO, TRUTH = ASSETS / "motion_test.mp4", ASSETS / "motion_test.json"
MODEL, WEIGHTS = "movinet_a0_stream", "motion"
MIN_CORRECT = 0.80  # of the labels scored, see score()
# The window (model frames) a label looks back over; None = the model's clip_frames (10 frames,
# 2 s at 5 fps for the bundled model). With the windowed policy a label is made only of frames
# after a change once a whole window has passed: that first window is not scored.
WINDOW_FRAMES: int | None = None
WINDOW = {"policy": "windowed", "frames": WINDOW_FRAMES}


def _settle_s() -> float:
    import model

    info = model.load_model(model.resolve_weights(MODEL, WEIGHTS)).info
    return (WINDOW_FRAMES or info.clip_frames) / info.frame_rate


def _bundled_available() -> bool:
    import model

    return VIDEO.is_file() and TRUTH.is_file() and WEIGHTS in model.available_weights(MODEL)


def test_the_bundled_model_and_the_test_video_ship_with_the_project():
    assert _bundled_available(), "model/weights/movinet_a0_stream_motion.safetensors or tests/assets/motion_test.* missing"


def score(results: list[dict], truth: dict) -> tuple[float, int]:
    segments = truth["segments"]
    settle = _settle_s()
    scored = correct = 0
    for result in results:
        t = result["pts"]
        segment = next((s for s in segments if s["start_s"] <= t < s["end_s"]), None)
        if segment is None or t - segment["start_s"] < settle:
            continue
        scored += 1
        correct += bool(result["labels"]) and result["labels"][0]["name"] == segment["name"]
    return correct / max(scored, 1), scored


@pytest.fixture(scope="module")
def motion_server(plumbing_weights):
    # A deep backlog: the whole video may be sent at once and no frame may be dropped.
    with run_server(model=MODEL, weights=WEIGHTS, max_backlog=1000, torch_threads=0) as server:
        yield server


def test_client_stream_labels_match_ground_truth(motion_server):
    from service.client import MovinetClient, model_frames

    truth = json.loads(TRUTH.read_text())

    async def run():
        client = MovinetClient(motion_server.http)
        session = await client.create_session(model=MODEL, weights=WEIGHTS, top_k=3, window=WINDOW)
        with av.open(str(VIDEO)) as container:
            return await client.stream(session, model_frames(container, session["frame_rate"]), realtime=False)

    summary = asyncio.run(run())
    assert not summary.errors and summary.dropped == 0
    accuracy, scored = score(summary.results, truth)
    print(f"client path: {accuracy:.1%} of {scored} labels correct")
    assert scored >= 0.5 * len(summary.results)
    assert accuracy >= MIN_CORRECT, f"{accuracy:.0%} of {scored} labels correct"


def _fragmented(path: Path) -> bytes:
    """The test video remuxed (no re-encoding) to fragmented MP4, as a live encoder would send it."""
    buffer = io.BytesIO()
    with av.open(str(path)) as source, av.open(buffer, "w", format="mp4",
                                               options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as out:
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return buffer.getvalue()


def test_video_stream_labels_match_ground_truth(motion_server):
    truth = json.loads(TRUTH.read_text())
    data = _fragmented(VIDEO)
    session = motion_server.create(model=MODEL, weights=WEIGHTS, window=WINDOW)

    async def run():
        async with connect(stream_url(motion_server, session)) as ws:
            await ws.recv()
            for i in range(0, len(data), 32 * 1024):
                await ws.send(data[i : i + 32 * 1024])
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws, timeout=120)

    results = results_of(asyncio.run(run()))
    assert len(results) == pytest.approx(truth["num_frames"] / truth["fps"] * session["frame_rate"], abs=2)
    accuracy, scored = score(results, truth)
    print(f"fragmented MP4 path: {accuracy:.1%} of {scored} labels correct")
    assert accuracy >= MIN_CORRECT, f"{accuracy:.0%} correct"


def test_models_lists_the_bundled_weights_facts(motion_server):
    import httpx

    entry = {m["name"]: m for m in httpx.get(f"{motion_server.http}/models").json()["models"]}[MODEL]
    assert WEIGHTS in entry["weights"]
    # the bundled file's own metadata, not the official A0 defaults (172 px, 50 frames)
    assert (entry["input_size"], entry["frame_rate"], entry["clip_frames"]) == (64, 5.0, 10)
