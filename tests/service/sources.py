"""Helpers for the server-side source tests (RTSP, WebRTC, the web page).

* :class:`RtspCamera`: ``tests/service/rtsp_server.py`` (gst-rtsp-server, system Python) as a
  subprocess on a free loopback port, killable and restartable on the same port.
* :func:`watch_labels`: what a labels socket receives until a condition holds.
* :func:`score_aligned`: the share of correct top labels against the test video's ground truth,
  for sources whose start in the clip is not known (a looping fake camera).
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

ASSETS = Path(__file__).resolve().parents[1] / "assets"
VIDEO, TRUTH = ASSETS / "motion_test.mp4", ASSETS / "motion_test.json"
MODEL, WEIGHTS = "movinet_a0_stream", "motion"
CLIP_S = 8.0  # the first two segments of the test video: pan left (0-4 s), zoom in (4-8 s)
SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


def require(available: bool, what: str) -> None:
    """Skip when a system package is missing, but fail in CI, whose .ci/run installs it."""
    if not available:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is missing: .ci/run should have installed it")
        pytest.skip(f"{what} is not installed (see .ci/run)")


def gst_rtsp_available() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = ("import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import Gst, GstRtspServer; "
             "Gst.init(None); assert Gst.ElementFactory.find('x264enc')")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True).returncode == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RtspCamera:
    """An RTSP server playing ``video`` at real time (each client from the start of the file)."""

    def __init__(self, video: Path, port: int | None = None, mount: str = "/test"):
        self.video, self.port, self.mount = video, port or free_port(), mount
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout: float = 20.0) -> RtspCamera:
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(RTSP_SERVER), str(self.video), "--port", str(self.port), "--mount", self.mount],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith("ready"):
                    return self
            if self.process.poll() is not None:
                break
        error = self.process.stderr.read() if self.process.poll() is not None else "timeout"
        self.kill()
        raise RuntimeError(f"the RTSP server did not start: {error}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


async def watch_labels(url: str, until: Callable[[list[dict[str, Any]]], bool], timeout: float
                       ) -> list[dict[str, Any]]:
    """Messages of a labels socket (greeting first) until ``until(messages)`` or the timeout."""
    messages: list[dict[str, Any]] = []
    async with connect(url) as ws:
        async def read() -> None:
            async for raw in ws:
                messages.append(json.loads(raw))
                if until(messages):
                    return

        try:
            await asyncio.wait_for(read(), timeout)
        except TimeoutError:
            pass
    return messages


def results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "result"]


def truth_at(truth: dict, t: float, period: float | None = None) -> tuple[str, float] | None:
    """(motion name, seconds since the motion began) at clip time ``t`` (looped every ``period``)."""
    if period:
        t %= period
    for segment in truth["segments"]:
        if segment["start_s"] <= t < segment["end_s"]:
            return segment["name"], t - segment["start_s"]
    return None


def settle_s() -> float:
    """The first window after a change is not scored (see test_motion_labels.py)."""
    import model

    info = model.load_model(model.resolve_weights(MODEL, WEIGHTS)).info
    return info.clip_frames / info.frame_rate


def score(labelled: list[tuple[float, str | None]], truth: dict, offset: float = 0.0,
          period: float | None = None) -> tuple[float, int]:
    """Share of ``(clip time, top label)`` pairs that name the motion, out of those scored."""
    settle = settle_s()
    scored = correct = 0
    for t, name in labelled:
        found = truth_at(truth, t + offset, period)
        if found is None or found[1] < settle:
            continue
        scored += 1
        correct += name == found[0]
    return correct / max(scored, 1), scored


def score_aligned(labelled: list[tuple[float, str | None]], truth: dict, period: float) -> tuple[float, int, float]:
    """:func:`score` at the clip offset (0.1 s steps over one period) that fits best.

    For a looping fake camera the clip position of the first frame the server sees is not known
    (the page opens the camera, then negotiates); the labels must still follow the motions.
    """
    best = (0.0, 0, 0.0)
    for step in range(int(period * 10)):
        accuracy, scored = score(labelled, truth, step / 10, period)
        if scored and accuracy > best[0]:
            best = (accuracy, scored, step / 10)
    return best


def chromium_path() -> str | None:
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
