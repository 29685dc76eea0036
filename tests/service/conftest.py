"""Real servers for the service tests: uvicorn on a free port in a thread, real sockets.

The server runs in this process (its own thread and event loop) so that a test can run the very
same model in-process and compare, and so that the suite pays for importing torch once.

Plumbing tests use ``movinet_test_stream`` with a weights file made here (random, but with every
block active and a peaked classifier, so that labels depend on the input); it is written to a
temporary ``MOVINET_CACHE_DIR`` and loaded by tag like any other weights.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
from PIL import Image

TEST_MODEL = "movinet_test_stream"
TEST_WEIGHTS = "plumbing"
TEST_LABELS = ["left", "right", "up", "down", "zoom_in", "zoom_out", "still", "shake"]


@pytest.fixture(scope="session", autouse=True)
def plumbing_weights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A weights file for the test model with input-dependent outputs, in a private cache dir."""
    import torch

    import model

    cache = tmp_path_factory.mktemp("movinet-cache")
    previous = os.environ.get("MOVINET_CACHE_DIR")
    os.environ["MOVINET_CACHE_DIR"] = str(cache)
    from tests.model.helpers import randomized

    net = randomized(TEST_MODEL, num_classes=len(TEST_LABELS))
    net.labels = list(TEST_LABELS)
    with torch.no_grad():
        net.classifier.logits.weight.mul_(30.0)  # peaked scores: top labels differ between inputs
    yield model.save_weights(net, cache / f"{TEST_MODEL}_{TEST_WEIGHTS}.safetensors")
    if previous is None:
        os.environ.pop("MOVINET_CACHE_DIR", None)
    else:
        os.environ["MOVINET_CACHE_DIR"] = previous


# --- servers --------------------------------------------------------------------------------------


@dataclass
class Server:
    app: Any
    port: int
    uvicorn: Any = None
    thread: Any = None

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(15)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def loaded(self, name: str = TEST_MODEL, weights: str = TEST_WEIGHTS):
        return self.app.state.registry.get_loaded(f"{name}:{weights}")

    def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("model", TEST_MODEL)
        response = httpx.post(self.http + "/sessions", json=body, timeout=30)
        assert response.status_code == 201, response.text
        return response.json()


@contextmanager
def run_server(draining: bool = True, wait_ready: bool = True, **overrides: Any) -> Iterator[Server]:
    """A real server on a free port; ``draining``: the server class `movinet-service serve` runs."""
    import uvicorn

    from service.api.app import create_app
    from service.cli import DrainingServer, uvicorn_config
    from service.settings import Settings

    settings = Settings(**{"model": TEST_MODEL, "weights": TEST_WEIGHTS, "reaper_interval_s": 0.2,
                           "torch_threads": 1, **overrides})
    app = create_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The configuration `movinet-service serve` runs (timeouts, head limits), uvicorn's own logging.
    config = uvicorn_config(app, settings, log_level="warning", log_config=uvicorn.config.LOGGING_CONFIG,
                            timeout_graceful_shutdown=5)
    server = DrainingServer(config, app) if draining else uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="uvicorn")
    thread.start()
    handle = Server(app, port, server, thread)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(handle.http + ("/readyz" if wait_ready else "/healthz"), timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("server did not become ready")
        time.sleep(0.05)
    try:
        yield handle
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
        if thread.is_alive():  # it goes on serving under later tests: said in the run's warnings
            warnings.warn(f"the test server on port {port} did not stop within 30 s", RuntimeWarning, stacklevel=1)


@pytest.fixture(scope="session")
def server(plumbing_weights: Path) -> Iterator[Server]:
    # A deep backlog: tests that compare labels frame by frame must not lose frames to a hiccup.
    with run_server(max_backlog=64) as handle:
        yield handle


# --- media ----------------------------------------------------------------------------------------


def moving_frames(count: int, width: int = 160, height: int = 120, direction: str = "right",
                  seed: int = 0) -> np.ndarray:
    """A textured scene panned in one direction: uint8 ``[count, height, width, 3]``."""
    rng = np.random.default_rng(seed)
    scene = (rng.random((height * 2, width * 3, 3)) * 255).astype(np.uint8)
    scene = np.repeat(np.repeat(scene[::8, ::8], 8, 0), 8, 1)[: height * 2, : width * 3]  # blocky texture
    frames = []
    for i in range(count):
        step = 4 * i
        x = {"right": step, "left": width * 2 - step, "up": 0, "down": 0}.get(direction, 0) % (width * 2)
        y = {"down": step, "up": height - step}.get(direction, 0) % height
        frames.append(scene[y : y + height, x : x + width])
    return np.stack(frames)


def jpeg(frame: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def encode_video(frames: np.ndarray, fps: int, container: str = "webm") -> bytes:
    """Encode frames with PyAV: ``webm`` (VP8), ``fmp4`` (fragmented H.264), ``mp4``, ``h264`` (raw)."""
    buffer = io.BytesIO()
    fmt, codec, options = {
        "webm": ("webm", "libvpx", {}),
        "fmp4": ("mp4", "libx264", {"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
        "mp4": ("mp4", "libx264", {}),
        "h264": ("h264", "libx264", {}),
    }[container]
    with av.open(buffer, "w", format=fmt, options=options) as output:
        stream = output.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "libx264":
            stream.options = {"tune": "zerolatency", "preset": "ultrafast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


def decode_video(data: bytes) -> list[tuple[float, np.ndarray]]:
    with av.open(io.BytesIO(data)) as container:
        return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


# --- reference: the same model, in-process, frame by frame -----------------------------------------


def reference_probs(loaded: Any, frames_rgb: list[np.ndarray], window: int | None = None,
                    policy: str = "windowed") -> np.ndarray:
    """Scores the service should produce for these model frames (uint8, already fitted), under the
    ``windowed`` or the ``tumbling`` window policy."""
    import torch

    if policy == "tumbling":
        from model.streaming import TumblingStream

        stream = TumblingStream(loaded.net, window=window or loaded.clip_frames, forward=loaded.step)
    else:
        stream = loaded.windowed(window or loaded.clip_frames)
    slot = stream.new_slot()
    out = []
    with torch.inference_mode():
        for rgb in frames_rgb:
            video = torch.from_numpy(rgb).permute(2, 0, 1)[None, :, None].float() / 255.0
            out.append(torch.softmax(stream.step([slot], video), -1)[0].numpy())
    return np.stack(out)


def fitted(loaded: Any, frame: np.ndarray) -> np.ndarray:
    """What the service's image path makes of a frame (JPEG round trip included)."""
    from service.sources.decode import decode_image
    from service.sources.frames import fit_frame

    return fit_frame(decode_image(jpeg(frame), 10**9), loaded.input_size, loaded.short_side)


# --- clients ----------------------------------------------------------------------------------------


def stream_url(server: Server, session: dict[str, Any], path: str = "stream", **query: Any) -> str:
    params = "&".join(f"{k}={v}" for k, v in {"token": session["token"], **query}.items() if v is not None)
    return f"{server.ws}/sessions/{session['session_id']}/{path}?{params}"


async def send_images(ws: Any, frames: np.ndarray, pts: list[float], pace_s: float = 0.0) -> None:
    for frame, t in zip(frames, pts, strict=True):
        await ws.send(json.dumps({"type": "frame", "pts": t}))
        await ws.send(jpeg(frame))
        if pace_s:
            await asyncio.sleep(pace_s)


async def collect_until_close(ws: Any, timeout: float = 60) -> list[dict[str, Any]]:
    messages = []

    async def read() -> None:
        async for raw in ws:
            messages.append(json.loads(raw))

    await asyncio.wait_for(read(), timeout)
    return messages


def results_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "result"]


def errors_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "error"]
