"""A real pool on this machine: a private redis-server, gateway and worker processes started with
``movinet-service gateway|worker`` (the commands the deployment runs), SIGKILL and restart.

The processes use the bundled motion model and the committed test video, so that the labels the
tests compare are real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import websockets
from PIL import Image

from tests.redis_server import RedisServer, free_port

REPO = Path(__file__).resolve().parents[2]
VIDEO = REPO / "tests" / "assets" / "motion_test.mp4"

# Pool settings for the tests: the shipped lease and backlog (a crash must cost no frame with the
# defaults); frequent checkpoints, the one setting under test, so that replays cross them; one
# torch thread each, as several workers share two cores here.
POOL_ENV = {
    "MOVINET_CHECKPOINT_EVERY": "7",
    "MOVINET_TORCH_THREADS": "1",
    "MOVINET_LOG_LEVEL": "info",
    "OMP_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
}


@dataclass
class Proc:
    role: str
    port: int
    args: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.role} on {self.port} exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.role} on {self.port} not ready: {self.log_path.read_text()[-3000:]}")


@dataclass
class Pool:
    redis: RedisServer
    directory: Path
    gateways: list[Proc] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)

    def _proc(self, role: str, extra_env: dict[str, str] | None = None) -> Proc:
        port = free_port()
        env = {**os.environ, **POOL_ENV, "MOVINET_REDIS_URL": self.redis.url, **(extra_env or {})}
        args = [sys.executable, "-m", "service.cli", role, "--host", "127.0.0.1", "--port", str(port)]
        group = self.gateways if role == "gateway" else self.workers
        proc = Proc(role, port, args, env, self.directory / f"{role}{len(group)}.log")
        group.append(proc)
        return proc

    def add(self, role: str, count: int, **env: str) -> list[Proc]:
        return [self._proc(role, env).start() for _ in range(count)]

    def events(self, name: str) -> list[dict[str, str]]:
        """The ``event=name`` log lines of every process, as key=value dicts."""
        found = []
        for path in sorted(self.directory.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if f"event={name} " in line or line.endswith(f"event={name}"):
                    found.append(dict(part.split("=", 1) for part in line.split() if "=" in part))
        return found

    def up(self, gateways: int, workers: int, **env: str) -> tuple[list[Proc], list[Proc]]:
        """Start gateways and workers and wait until every one is ready."""
        started = self.add("gateway", gateways, **env), self.add("worker", workers, **env)
        for proc in started[0] + started[1]:
            proc.wait_ready()
        return started

    def holder(self, session_id: str, workers: list[Proc], timeout: float = 60.0) -> Proc:
        """The worker process that first leased the session (from the workers' logs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events("lease_taken"):
                if event["session_id"] == session_id:
                    return next(w for w in workers if w.process and f"-{w.process.pid}-" in event["worker"])
            time.sleep(0.05)
        raise AssertionError(f"no worker leased {session_id}")

    def restart(self, proc: Proc) -> None:
        proc.kill()
        proc.start()

    def stop(self) -> None:
        for proc in self.gateways + self.workers:
            proc.kill(signal.SIGKILL)

    def create(self, gateway: Proc, **body: Any) -> dict[str, Any]:
        response = httpx.post(gateway.url + "/sessions", json=body, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[Pool]:
    redis = RedisServer(tmp_path / "redis").start()
    pool = Pool(redis, tmp_path)
    yield pool
    pool.stop()
    redis.kill()


# --- the client side --------------------------------------------------------------------------------


def video_frames(count: int, fps: float = 5.0) -> list[tuple[float, bytes]]:
    """``count`` JPEG frames of the committed test video at ``fps``, with their pts."""
    frames: list[tuple[float, bytes]] = []
    with av.open(str(VIDEO)) as container:
        for frame in container.decode(video=0):
            t = float(frame.time)
            if t + 1e-6 >= len(frames) / fps:
                buffer = __import__("io").BytesIO()
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(buffer, "JPEG", quality=90)
                frames.append((round(len(frames) / fps, 6), buffer.getvalue()))
                if len(frames) == count:
                    break
    return frames


def ws_url(gateway: Proc, session: dict[str, Any], path: str = "stream", **query: Any) -> str:
    params = "&".join(f"{k}={v}" for k, v in {"token": session["token"], **query}.items())
    return f"ws://127.0.0.1:{gateway.port}/sessions/{session['session_id']}/{path}?{params}"


async def stream_frames(gateway: Proc, session: dict[str, Any], frames: list[tuple[float, bytes]],
                        in_flight: int = 12, timeout: float = 120.0, pace_s: float = 0.0,
                        sent_at: dict[float, float] | None = None, stall_s: float = 5.0) -> list[dict[str, Any]]:
    """Send the frames (at most ``in_flight`` ahead of the results, at least ``pace_s`` apart),
    end the stream, return every message. Frames the gateway could not log (a store outage: one
    ``store_unavailable`` error for many frames) never get a result: after ``stall_s`` without
    one the window moves on, and a closed socket ends the sending. ``sent_at``: pts -> monotonic
    send time, filled in."""
    messages: list[dict[str, Any]] = []
    async with await connect_producer(gateway, session) as ws:
        results = 0
        last_result = time.monotonic()
        done = asyncio.Event()

        async def reader() -> None:
            nonlocal results, last_result
            async for raw in ws:
                message = json.loads(raw)
                messages.append(message)
                if message["type"] == "result":
                    results += 1
                    last_result = time.monotonic()
            done.set()

        task = asyncio.create_task(reader())
        for index, (pts, data) in enumerate(frames):
            while index - results >= in_flight and not done.is_set() and time.monotonic() - last_result < stall_s:
                await asyncio.sleep(0.01)
            if done.is_set():
                break
            if sent_at is not None:
                sent_at[pts] = time.monotonic()
            await ws.send(json.dumps({"type": "frame", "pts": pts}))
            await ws.send(data)
            if pace_s:
                await asyncio.sleep(pace_s)
        if not done.is_set():
            await ws.send(json.dumps({"type": "eos"}))
        await asyncio.wait_for(done.wait(), timeout)
        task.cancel()
    return messages


async def connect_producer(gateway: Proc, session: dict[str, Any], patience: float = 10.0) -> Any:
    """Open the session's frames socket, retrying while another producer's slot has not freed
    (close 4409: e.g. the previous gateway died holding it; it frees within 3 s). The returned
    socket has had its ``session`` greeting read."""
    deadline = time.monotonic() + patience
    while True:
        ws = await websockets.connect(ws_url(gateway, session), max_size=None)
        hello = json.loads(await ws.recv())
        if hello["type"] == "session":
            return ws
        await ws.close()
        if hello.get("code") != "stream_in_use" or time.monotonic() > deadline:
            raise AssertionError(f"refused: {hello}")
        await asyncio.sleep(0.2)


def results_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["type"] == "result"]


def assert_same_labels(results: list[dict[str, Any]], reference: list[dict[str, Any]], tol: float = 2e-3) -> None:
    """Seq by seq: the same seqs (no gap, no duplicate), the same labels, scores within ``tol``."""
    assert [r["seq"] for r in results] == [r["seq"] for r in reference]
    for got, want in zip(results, reference, strict=True):
        assert [label["name"] for label in got["labels"]][:1] == [label["name"] for label in want["labels"]][:1], (
            got["seq"], got["labels"], want["labels"])
        scores = {label["name"]: label["score"] for label in got["labels"]}
        for label in want["labels"]:
            if label["name"] in scores:
                assert abs(scores[label["name"]] - label["score"]) <= tol, (got["seq"], got["labels"], want["labels"])
        assert (got["pts"], got["frame_index"]) == (want["pts"], want["frame_index"])


def metric(proc: Proc, name: str) -> float:
    text = httpx.get(proc.url + "/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


__all__ = ["Pool", "Proc", "assert_same_labels", "metric", "np", "results_of", "stream_frames", "video_frames",
           "ws_url"]
