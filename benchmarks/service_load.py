"""Load test: N concurrent clients at 5 fps; the most sessions held in real time, and latency.

    python benchmarks/service_load.py                       # spawns `movinet-service serve`, bundled A0
    python benchmarks/service_load.py --sessions 4 8 12 16 20 --duration 30
    python benchmarks/service_load.py --url http://host:8000 # an already running server

Every client streams the motion test video (decoded once, resampled to the model's frame rate,
JPEG-encoded once and shared, so that the clients cost little CPU) in real time, looping, each
starting at a random offset. Frame-to-label latency is measured on the client: from sending a
frame to receiving its label. A level of N sessions is "held in real time" when no frame is
dropped, every sent frame gets its label, and the p99 latency is under the target (300 ms).

Prints one line per level and a JSON summary; ``--json PATH`` writes it too.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.sources.frames import Resampler  # noqa: E402

DEFAULT_VIDEO = ROOT / "tests" / "assets" / "motion_test.mp4"


def load_frames(path: Path, fps: float, max_side: int = 320) -> list[bytes]:
    """The video's frames on the model's grid, as JPEG bytes."""
    resampler, frames = Resampler(fps), []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if not resampler.push(float(frame.pts * frame.time_base)):
                continue
            scale = min(1.0, max_side / max(frame.width, frame.height))
            rgb = frame.to_ndarray(format="rgb24", width=round(frame.width * scale), height=round(frame.height * scale))
            buffer = io.BytesIO()
            Image.fromarray(rgb).save(buffer, "JPEG", quality=90)
            frames.append(buffer.getvalue())
    return frames


async def run_client(url: str, body: dict, frames: list[bytes], fps: float, duration: float, warmup: float,
                     api_key: str | None, offset: int | None = None, start_in: float = 0.0) -> dict:
    """One client, arriving ``start_in`` seconds from now; ``offset`` (default random) is where in
    ``frames`` it starts. Its stats, with the top label of every labelled frame (``labels``: frame
    index → label)."""
    from websockets.asyncio.client import connect

    await asyncio.sleep(start_in)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{url}/sessions", json=body, headers=headers)
        if response.status_code in (429, 503):  # admission control: the server says it is full
            return {"sent": 0, "results": 0, "errors": 0, "dropped": 0, "refused": 1, "latencies": [], "labels": {}}
        response.raise_for_status()
        session = response.json()
    sent: dict[int, float] = {}
    latencies: list[float] = []
    labels: dict[int, int | None] = {}
    stats = {"sent": 0, "results": 0, "errors": 0, "dropped": 0, "refused": 0}
    if offset is None:
        offset = random.randrange(len(frames))
        await asyncio.sleep(random.random() / fps)  # stagger the clients within a frame period
    async with connect(f"{session['frames_url']}?token={session['token']}", max_size=None) as ws:
        await ws.recv()
        started = time.monotonic()
        measure_from = started + warmup

        async def receive() -> None:
            async for raw in ws:
                message = json.loads(raw)
                if message["type"] == "result":
                    top = message["labels"][0]["id"] if message["labels"] else None
                    labels[message["frame_index"]] = top
                    t_sent = sent.pop(message["frame_index"], None)
                    if t_sent is not None and t_sent >= measure_from:
                        latencies.append((time.monotonic() - t_sent) * 1000.0)
                        stats["results"] += 1
                    stats["dropped"] = message["dropped"]
                elif message["type"] == "error":
                    stats["errors"] += 1

        receiver = asyncio.create_task(receive())
        k = 0
        while True:
            due = started + k / fps
            if due > started + warmup + duration:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            sent[k] = now
            if now >= measure_from:
                stats["sent"] += 1
            await ws.send(json.dumps({"type": "frame", "pts": k / fps}))
            await ws.send(frames[(offset + k) % len(frames)])
            k += 1
        await ws.send(json.dumps({"type": "eos"}))
        try:
            await asyncio.wait_for(receiver, 30)
        except TimeoutError:
            receiver.cancel()
    async with httpx.AsyncClient(timeout=30) as http:
        await http.delete(f"{url}/sessions/{session['session_id']}",
                          headers={"Authorization": f"Bearer {session['token']}"})
    stats["latencies"], stats["labels"] = latencies, labels
    return stats


def server_counters(url: str) -> dict[str, float]:
    """Sums and counts of the inference histograms (all models together)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"movinet_inference_duration_seconds", "movinet_batch_size"}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        if family.name in wanted:
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), None off Linux or without one."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_level(url: str, sessions: int, body: dict, frames: list[bytes], fps: float, duration: float,
                    warmup: float, api_key: str | None, ramp: float = 0.0, server_pid: int | None = None) -> dict:
    for _ in range(60):  # the last level's backlog drained: the server admits sessions again
        async with httpx.AsyncClient(timeout=10) as http:
            if (await http.get(f"{url}/readyz")).status_code == 200:
                break
        await asyncio.sleep(1.0)
    before, started = server_counters(url), time.monotonic()
    server_cpu, client_cpu = cpu_seconds(server_pid), time.process_time()
    outcomes = await asyncio.gather(*(run_client(url, body, frames, fps, duration, warmup, api_key,
                                                 start_in=i * ramp / sessions) for i in range(sessions)))
    after, elapsed = server_counters(url), time.monotonic() - started
    client_cpu = time.process_time() - client_cpu
    if server_cpu is not None:
        server_cpu = cpu_seconds(server_pid) - server_cpu
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    forwards = delta.get("movinet_inference_duration_seconds_count", 0.0)
    latencies = np.array([x for o in outcomes for x in o["latencies"]]) if outcomes else np.array([])
    sent = sum(o["sent"] for o in outcomes)
    results = sum(o["results"] for o in outcomes)
    return {
        "sessions": sessions,
        "sent": sent,
        "labelled": results,
        "dropped": sum(o["dropped"] for o in outcomes),
        "errors": sum(o["errors"] for o in outcomes),
        "refused": sum(o["refused"] for o in outcomes),  # 503/429 at POST /sessions: admission said full
        "admitted": sessions - sum(o["refused"] for o in outcomes),
        "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else None,
        "p99_ms": float(np.percentile(latencies, 99)) if latencies.size else None,
        "max_ms": float(latencies.max()) if latencies.size else None,
        # Server side: sessions per forward, time per forward, share of wall time spent in forwards.
        "mean_batch": delta.get("movinet_batch_size_sum", 0.0) / forwards if forwards else None,
        "forward_ms": 1000 * delta.get("movinet_inference_duration_seconds_sum", 0.0) / forwards if forwards else None,
        "forward_busy": delta.get("movinet_inference_duration_seconds_sum", 0.0) / elapsed,
        # Cores each side used on average over the level (arrivals, warm-up and drain included).
        "server_cores": server_cpu / elapsed if server_cpu is not None else None,
        "client_cores": client_cpu / elapsed,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_compiled(url: str, api_key: str | None, timeout: float = 900.0) -> dict | None:
    """Wait until the default model no longer builds a compiled path (``GET /models``); its runtime."""
    deadline = time.monotonic() + timeout
    while True:
        models = httpx.get(f"{url}/models", timeout=10).json()["models"]
        runtime = next((m.get("runtime") for m in models if m["default"]), None)
        if not (runtime or {}).get("compiling") or time.monotonic() > deadline:
            print(f"runtime: {runtime}", flush=True)
            return runtime
        time.sleep(1.0)


def spawn_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # shipped defaults, but for the per-client quota: this one client on one address stands in for
    # many cameras
    env = {**os.environ, "MOVINET_PORT": str(port), "MOVINET_LOG_LEVEL": "warning",
           "MOVINET_MAX_SESSIONS_PER_CLIENT": "0"}
    if args.torch_threads is not None:
        env["MOVINET_TORCH_THREADS"] = str(args.torch_threads)
    if args.weights == "random":
        env["MOVINET_ALLOW_RANDOM_WEIGHTS"] = "true"
    command = [sys.executable, "-m", "service.cli", "serve", "--model", args.model]
    if args.weights:
        command += ["--weights", args.weights]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    return process, wait_ready(process, f"http://127.0.0.1:{port}")


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120.0) -> str:
    """``url`` once the spawned server's ``/readyz`` says 200 (exits if the server dies or stays unready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise SystemExit("the server exited during start-up")
        time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (default: spawn one)")
    parser.add_argument("--model", default="movinet_a0_stream")
    parser.add_argument("--weights", default=None, help="weights tag (default: the model's first; 'random' allowed)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8, 12, 16, 20, 24])
    parser.add_argument("--fps", type=float, default=5.0, help="client frame rate (default 5)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds at the start of a level")
    parser.add_argument("--ramp", type=float, default=0.0, help="the clients of a level arrive one by one over "
                        "this many seconds (default 0: all at once); each then streams --warmup + --duration")
    parser.add_argument("--target-p99-ms", type=float, default=300.0)
    parser.add_argument("--window-policy", choices=("windowed", "tumbling", "unbounded"), default=None,
                        help="the sessions' window policy (default: the server's, windowed)")
    parser.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    parser.add_argument("--torch-threads", type=int, default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--stop-after-fail", action="store_true", help="stop at the first level not held")
    parser.add_argument("--profile", type=Path, help="record the spawned server with py-spy during the last "
                        "level into this file (raw format) and print where its CPU went")
    parser.add_argument("--profile-gil", action="store_true", help="with --profile: sample only the thread "
                        "holding the GIL (py-spy --gil), and say how much of the time the GIL was held")
    parser.add_argument("--no-wait-compiled", action="store_true",
                        help="measure at once, also while a compiled path is still being built")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    spy_binary = Path(sys.executable).parent / "py-spy"
    if args.profile and not spy_binary.exists():
        parser.error(f"--profile needs py-spy beside this Python ({spy_binary}): pip install -e '.[bench]'")
    process = None
    url = args.url
    if url is None:
        process, url = spawn_server(args)
    try:
        runtime = None if args.no_wait_compiled else wait_compiled(url, args.api_key)
        frames = load_frames(args.video, args.fps)
        body: dict = {"model": args.model}
        if args.weights:
            body["weights"] = args.weights
        if args.window_policy:
            body["window"] = {"policy": args.window_policy}
        levels, held = [], 0
        print(f"server {url}, {len(frames)} distinct frames, {args.fps:g} fps per client, "
              f"{args.duration:g} s per level, target p99 < {args.target_p99_ms:g} ms", flush=True)
        for number, sessions in enumerate(args.sessions):
            spy = None
            if args.profile and process is not None and number == len(args.sessions) - 1:
                spy = subprocess.Popen([str(spy_binary), "record", "-p", str(process.pid), "-d", str(int(args.duration)),
                                        "-r", "100", "--threads", "--nonblocking", "-f", "raw",
                                        *(["--gil"] if args.profile_gil else []),
                                        "-o", str(args.profile)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            level = asyncio.run(run_level(url, sessions, body, frames, args.fps, args.duration, args.warmup,
                                          args.api_key, args.ramp, process.pid if process else None))
            level["held"] = (level["dropped"] == 0 and level["errors"] == 0 and level["refused"] == 0
                             and level["labelled"] >= level["sent"]
                             and level["p99_ms"] is not None and level["p99_ms"] < args.target_p99_ms)
            levels.append(level)
            if spy is not None:
                spy.wait(60)
                from profile_summary import summary

                print(summary(args.profile, gil_of=100 * int(args.duration) if args.profile_gil else None), flush=True)
            print(f"{sessions:4d} sessions: p50 {level['p50_ms'] or float('nan'):7.1f} ms  "
                  f"p99 {level['p99_ms'] or float('nan'):7.1f} ms  max {level['max_ms'] or float('nan'):7.1f} ms  "
                  f"labelled {level['labelled']}/{level['sent']}  dropped {level['dropped']}  refused {level['refused']} (admitted {level['admitted']})  "
                  f"batch {level['mean_batch'] or 0:4.1f}  forward {level['forward_ms'] or 0:6.1f} ms  "
                  f"busy {level['forward_busy']:4.0%}  cores: server {level['server_cores'] or float('nan'):.2f} "
                  f"clients {level['client_cores']:.2f}  {'held' if level['held'] else 'NOT held'}", flush=True)
            if level["held"]:
                held = max(held, sessions)
            elif args.stop_after_fail:
                break
        summary = {"url": url, "model": args.model, "runtime": runtime, "weights": args.weights, "fps": args.fps,
                   "target_p99_ms": args.target_p99_ms, "max_sessions_held": held, "levels": levels,
                   "cpus": os.cpu_count()}
        print(json.dumps({k: v for k, v in summary.items() if k != "levels"}))
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
