"""Hostile video streams beside a good session: what they cost it, and the server's memory.

    python benchmarks/hostile_decode.py                          # 3 hostile 4K streams, shipped vs unlimited
    python benchmarks/hostile_decode.py --hostile 6 --size 3840x2160 --fps 60 --duration 20
    python benchmarks/hostile_decode.py --configs shipped        # only the shipped settings

For each configuration a fresh ``movinet-service serve`` (embedded default, bundled model) gets:

1. a calm run: one canary session (the service-load client: JPEG frames of the motion test video
   at 5 fps, in real time) alone, for ``--duration`` seconds;
2. the same canary again (same frames, same start) while ``--hostile`` other sessions stream a
   fragmented-MP4 H.264 video of ``--size`` at ``--fps`` over their WebSockets as fast as the
   server reads it, again and again (``{"type": "start"}`` between two passes).

It reports the canary's frame→label latency in both runs, its drops, whether its labels in the
second run equal the first seq by seq, the server's peak resident memory (``VmHWM``) and what the
hostile sockets heard (results, error codes). ``shipped`` runs the shipped settings; ``unlimited``
turns the decode limits off (``MOVINET_DECODE_BUDGET_PIXELS=0``,
``MOVINET_DECODE_MAX_PIXEL_RATE=0``, ``MOVINET_DECODE_TOTAL_PIXEL_RATE=0``,
``MOVINET_DECODE_NICE=0``), which is what the server did before they existed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import av
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from service_load import DEFAULT_VIDEO, free_port, load_frames, run_client, wait_ready  # noqa: E402

CONFIGS = {
    "shipped": {},
    "unlimited": {"MOVINET_DECODE_BUDGET_PIXELS": "0", "MOVINET_DECODE_MAX_PIXEL_RATE": "0",
                  "MOVINET_DECODE_TOTAL_PIXEL_RATE": "0", "MOVINET_DECODE_NICE": "0"},
}


def hostile_video(width: int, height: int, fps: int, seconds: float) -> bytes:
    """Fragmented MP4 (H.264): moving noise, costly to decode and cheap to send again."""
    rng = np.random.default_rng(7)
    tile = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4",
                 options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}) as output:
        stream = output.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"tune": "zerolatency", "preset": "ultrafast", "crf": "28"}
        for k in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(tile, 8 * k, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return buffer.getvalue()


async def run_hostile(url: str, video: bytes, until: float, heard: Counter, chunk: int = 65536) -> None:
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(f"{url}/sessions", json={})
        if response.status_code != 201:
            heard[f"create_{response.status_code}"] += 1
            return
        session = response.json()

    async with connect(session["frames_url"], max_size=None,
                       additional_headers={"Authorization": f"Bearer {session['token']}"}) as ws:
        await ws.recv()

        async def listen() -> None:
            async for raw in ws:
                message = json.loads(raw)
                heard[message["code"] if message["type"] == "error" else message["type"]] += 1

        listener = asyncio.create_task(listen())
        try:
            while time.monotonic() < until:
                for i in range(0, len(video), chunk):
                    if time.monotonic() >= until:
                        break
                    await ws.send(video[i : i + chunk])
                await ws.send(json.dumps({"type": "start"}))
        finally:
            listener.cancel()


class PeakMemory(threading.Thread):
    """The server's resident memory, sampled; and its ``VmHWM`` (the kernel's own peak)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopped = pid, [], threading.Event()

    def status(self, field: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB → MB
        return float("nan")

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            self.samples.append(self.status("VmRSS"))


def spawn(env_extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MOVINET_PORT": str(port), "MOVINET_LOG_LEVEL": "warning", **env_extra}
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve"], cwd=ROOT, env=env)
    return process, wait_ready(process, f"http://127.0.0.1:{port}")


def latency(stats: dict) -> dict:
    values = np.array(stats["latencies"])
    return {"p50_ms": float(np.percentile(values, 50)) if values.size else None,
            "p99_ms": float(np.percentile(values, 99)) if values.size else None,
            "max_ms": float(values.max()) if values.size else None,
            "labelled": stats["results"], "sent": stats["sent"], "dropped": stats["dropped"]}


async def with_hostile(url: str, frames: list[bytes], args: argparse.Namespace, video: bytes,
                       heard: Counter) -> dict:
    until = time.monotonic() + args.warmup + args.duration + 1.0
    hostile = [asyncio.create_task(run_hostile(url, video, until, heard)) for _ in range(args.hostile)]
    await asyncio.sleep(1.0)  # the hostile streams are decoding before the canary starts
    canary = await run_client(url, {}, frames, 5.0, args.duration, args.warmup, None, offset=0)
    await asyncio.gather(*hostile, return_exceptions=True)
    return canary


def run_config(name: str, args: argparse.Namespace, frames: list[bytes], video: bytes) -> dict:
    process, url = spawn(CONFIGS[name])
    memory = PeakMemory(process.pid)
    try:
        base_mb = memory.status("VmRSS")
        calm = asyncio.run(run_client(url, {}, frames, 5.0, args.duration, args.warmup, None, offset=0))
        memory.start()
        heard: Counter = Counter()
        loaded = asyncio.run(with_hostile(url, frames, args, video, heard))
        memory.stopped.set()
        peak = memory.status("VmHWM")
    finally:
        process.terminate()
        process.wait(30)
    equal = calm["labels"] == loaded["labels"]
    return {"config": name, "env": CONFIGS[name], "calm": latency(calm), "hostile": latency(loaded),
            "labels_equal": equal, "labels_compared": len(calm["labels"]),
            "rss_before_mb": base_mb, "rss_peak_mb": peak,
            "rss_sampled_max_mb": max(memory.samples, default=float("nan")), "hostile_heard": dict(heard)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["unlimited", "shipped"])
    parser.add_argument("--hostile", type=int, default=3, help="hostile video sessions (default 3)")
    parser.add_argument("--size", default="3840x2160", help="hostile video size (default 3840x2160, the "
                        "shipped max_frame_pixels)")
    parser.add_argument("--fps", type=int, default=60, help="hostile video frame rate (default 60)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds of each canary run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.size.split("x"))
    started = time.monotonic()
    video = hostile_video(width, height, args.fps, 2.0)
    print(f"hostile video: {width}x{height} @ {args.fps} fps, 2 s, {len(video) / 1e6:.1f} MB "
          f"(encoded in {time.monotonic() - started:.0f} s)", flush=True)
    frames = load_frames(DEFAULT_VIDEO, 5.0)
    results = []
    for name in args.configs:
        result = run_config(name, args, frames, video)
        results.append(result)
        calm, hostile = result["calm"], result["hostile"]
        print(f"{name:10s} canary calm p50 {calm['p50_ms']:.0f} p99 {calm['p99_ms']:.0f} ms | beside "
              f"{args.hostile} hostile: p50 {hostile['p50_ms'] or float('nan'):.0f} p99 "
              f"{hostile['p99_ms'] or float('nan'):.0f} max {hostile['max_ms'] or float('nan'):.0f} ms, labelled "
              f"{hostile['labelled']}/{hostile['sent']}, dropped {hostile['dropped']}, labels equal "
              f"{result['labels_equal']} | server RSS {result['rss_before_mb']:.0f} → peak "
              f"{result['rss_peak_mb']:.0f} MB | hostile heard {result['hostile_heard']}", flush=True)
    summary = {"hostile": args.hostile, "size": args.size, "fps": args.fps, "duration": args.duration,
               "load_avg": os.getloadavg(), "results": results}
    print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
