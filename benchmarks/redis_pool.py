"""The Redis worker pool: state bytes, Redis traffic per stream, sessions per worker, failover time.

    python benchmarks/redis_pool.py                    # everything, default settings, bundled A0
    python benchmarks/redis_pool.py --quick            # shorter runs
    python benchmarks/redis_pool.py --only failover    # one part: state, frames, traffic, capacity, failover
    python benchmarks/redis_pool.py --only traffic --env MOVINET_CHECKPOINT_EVERY=150   # other pool settings
    python benchmarks/redis_pool.py --only traffic --size 172 --video ../shared/media/cleaning_pool_handheld_340x256.mp4

It starts its own ``redis-server`` on a free port and ``movinet-service gateway`` / ``worker``
processes (the commands the deployment runs) with the default pool settings unless told
otherwise, streams the motion test video in real time at the model's 5 fps, and measures:

* **frames**: bytes of one logged model frame (64 and 172 px), raw uint8 and losslessly compressed;
* **state**: checkpoint bytes of one A0 session (the bundled 64 px model's windowed slot, and the
  official 172 px A0 for comparison): float32, float16, and float32 + zlib;
* **traffic**: Redis network bytes (``INFO stats``: in + out), commands and server CPU time
  (``INFO commandstats``) per stream-second, with every component of the pool reading and writing
  it (frames in, takes, commits, checkpoints, results out to the client), and the checkpoints the
  workers wrote meanwhile (their ``/metrics``): what a shard's capacity in cameras is computed from
  (docs/deploy.md). ``--size 172`` serves the bundled model at another input size (its weights
  file rewritten with that size: the official A0's 172 px), ``--video`` streams another clip;
* **capacity**: the most sessions one worker holds in real time (no drops, p99 under the target);
* **failover**: SIGKILL the worker holding a streaming session; the time from the kill to the
  client's next label (another worker resumes from the checkpoint and replays the log).

Prints a line per measurement and a JSON summary (``--json PATH`` writes it too).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.redis_server import RedisServer, free_port  # noqa: E402

_spec = importlib.util.spec_from_file_location("service_load", ROOT / "benchmarks" / "service_load.py")
service_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(service_load)


def state_sizes() -> dict:
    import torch

    import model
    from model.streaming import WindowedStream
    from service.worker.runner import encode_checkpoint

    out = {}
    for name, weights, size in (("bundled A0 64px", "motion", 64), ("official-size A0 172px", None, 172)):
        net = model.create_model("movinet_a0_stream", weights=weights, num_classes=600 if weights is None else None)
        net.eval()
        stream = WindowedStream(net, window=10 if weights else 50)
        slot = stream.new_slot()
        with torch.inference_mode():
            for _ in range(12):
                stream.step([slot], torch.rand(1, 3, 1, size, size))
        smoothed = np.zeros(len(net.labels or range(600)), np.float32)
        full = encode_checkpoint(slot, False, smoothed)
        half = encode_checkpoint(slot, False, smoothed, half=True)
        packed = zlib.compress(full, 1)
        out[name] = {"fp32_bytes": len(full), "fp16_bytes": len(half), "fp32_zlib1_bytes": len(packed)}
        print(f"state {name}: fp32 {len(full) / 1e3:.1f} kB, fp16 {len(half) / 1e3:.1f} kB, "
              f"fp32+zlib {len(packed) / 1e3:.1f} kB", flush=True)
    return out


def frame_sizes(sizes: tuple[int, ...] = (64, 172), limit: int = 150) -> dict:
    """Bytes of one logged model frame (uint8 RGB, fitted as the gateway fits it) of the test
    video at 5 fps: raw, zlib level 1 and 6 (lossless), zlib of the difference to the previous
    frame (what a delta-coded log would store; not done: a trimmed log must replay on its own),
    and JPEG quality 90 of the fitted frame (lossy, for comparison)."""
    import io

    import av
    from PIL import Image

    from model.preprocess import TimestampResampler, fit_frame

    out = {}
    for size in sizes:
        resampler, rows, previous = TimestampResampler(5.0), [], None
        with av.open(str(service_load.DEFAULT_VIDEO)) as container:
            for frame in container.decode(video=0):
                if len(rows) >= limit:
                    break
                if not resampler.push(float(frame.pts * frame.time_base)):
                    continue
                fitted = np.ascontiguousarray(fit_frame(frame.to_ndarray(format="rgb24"), size))
                raw = fitted.tobytes()
                delta = (fitted.astype(np.int16) - previous).astype(np.uint8).tobytes() if previous is not None else raw
                previous = fitted.astype(np.int16)
                jpeg = io.BytesIO()
                Image.fromarray(fitted).save(jpeg, "JPEG", quality=90)
                rows.append((len(raw), len(zlib.compress(raw, 1)), len(zlib.compress(raw, 6)), len(zlib.compress(delta, 1)),
                             len(jpeg.getvalue())))
        mean = np.asarray(rows, dtype=np.float64).mean(axis=0)
        out[f"{size}px"] = {"frames": len(rows), "raw_bytes": round(mean[0]), "zlib1_bytes": round(mean[1]),
                            "zlib6_bytes": round(mean[2]), "delta_zlib1_bytes": round(mean[3]),
                            "jpeg90_bytes": round(mean[4]), "zlib1_ratio": round(mean[0] / mean[1], 2)}
        print(f"frame {size}x{size}: raw {mean[0] / 1e3:.1f} kB, zlib-1 {mean[1] / 1e3:.1f} kB, zlib-6 "
              f"{mean[2] / 1e3:.1f} kB, delta+zlib-1 {mean[3] / 1e3:.1f} kB, JPEG q90 (lossy) {mean[4] / 1e3:.1f} kB "
              f"({len(rows)} frames)", flush=True)
    return out


class PoolProcs:
    def __init__(self, redis: RedisServer, workdir: Path, env: dict[str, str]) -> None:
        self.redis, self.workdir, self.env = redis, workdir, env
        self.procs: list[tuple[str, int, subprocess.Popen]] = []

    def start(self, role: str) -> tuple[str, int, subprocess.Popen]:
        port = free_port()
        log = open(self.workdir / f"{role}-{port}.log", "ab")  # noqa: SIM115
        env = {**os.environ, "MOVINET_REDIS_URL": self.redis.url, **self.env}
        process = subprocess.Popen([sys.executable, "-m", "service.cli", role, "--host", "127.0.0.1", "--port",
                                    str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        entry = (role, port, process)
        self.procs.append(entry)
        return entry

    @staticmethod
    def wait_ready(port: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"port {port} not ready")

    def stop(self) -> None:
        for _, _, process in self.procs:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def redis_counters(redis: RedisServer) -> tuple[int, dict[str, tuple[int, int]], float]:
    """Network bytes in + out; per command (``INFO commandstats``: commands inside scripts are
    counted too, and a script's time includes theirs) its calls and µs; Redis' CPU seconds."""
    import redis as redis_py

    client = redis_py.Redis.from_url(redis.url)
    info = client.info("stats")
    cpu = client.info("cpu")
    commands = {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
                for name, v in client.info("commandstats").items()}
    client.close()
    return (int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"]), commands,
            float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]))


# Commands the service sends itself (the others run inside its scripts): requests per stream.
CLIENT_COMMANDS = {"xread", "xrange", "xrevrange", "zadd", "zrem", "zrangebyscore", "zcount", "zcard", "hgetall",
                   "hmget", "hget", "get", "set", "mget", "client|id", "client|list", "xadd", "del", "scan"}


def checkpoints_written(pool: PoolProcs) -> tuple[float, float]:
    """Checkpoints the live workers wrote so far, and their bytes (``/metrics``)."""
    count = size = 0.0
    for role, port, process in pool.procs:
        if role != "worker" or process.poll() is not None:
            continue
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            if line.startswith("movinet_worker_checkpoints_total "):
                count += float(line.split()[1])
            elif line.startswith("movinet_worker_checkpoint_bytes_sum "):
                size += float(line.split()[1])
    return count, size


def traffic(pool: PoolProcs, gateway: str, frames: list[bytes], sessions: int, duration: float) -> dict:
    (bytes_before, commands_before, cpu_before), started = redis_counters(pool.redis), time.monotonic()
    checkpoints_before = checkpoints_written(pool)
    level = asyncio.run(service_load.run_level(gateway, sessions, {}, frames, 5.0, duration, 0.0, None))
    elapsed = time.monotonic() - started
    bytes_after, commands_after, cpu_after = redis_counters(pool.redis)
    checkpoints = [a - b for a, b in zip(checkpoints_written(pool), checkpoints_before, strict=True)]
    cpu_us = (cpu_after - cpu_before) * 1e6 / elapsed / sessions
    spent = bytes_after - bytes_before
    per_stream = spent / elapsed / sessions
    calls = {name: (c - commands_before.get(name, (0, 0))[0], u - commands_before.get(name, (0, 0))[1])
             for name, (c, u) in commands_after.items()}
    calls = {name: cu for name, cu in calls.items() if cu[0] > 0 and name not in ("info",)}
    ops = sum(c for c, _ in calls.values()) / elapsed / sessions  # inner commands of scripts included
    scripts = calls.get("evalsha", (0, 0))[0] / elapsed / sessions
    requests = scripts + sum(c for name, (c, _) in calls.items() if name in CLIENT_COMMANDS) / elapsed / sessions
    print(f"traffic: {sessions} streams x {duration:.0f} s: {per_stream / 1e3:.1f} kB/s of Redis traffic, "
          f"{requests:.1f} requests/s ({scripts:.1f} scripts), {cpu_us:.0f} µs/s of Redis CPU per 5-fps stream "
          f"(labelled {level['labelled']}/{level['sent']}, dropped {level['dropped']}; {checkpoints[0]:.0f} checkpoints, "
          f"{checkpoints[1] / 1e3 / elapsed / sessions:.1f} kB/s of them per stream)", flush=True)
    top = sorted(calls.items(), key=lambda item: -item[1][1])[:8]
    print("  by command (calls/s, µs/s per stream): " + ", ".join(
        f"{name} {c / elapsed / sessions:.1f} / {u / elapsed / sessions:.0f}" for name, (c, u) in top), flush=True)
    return {"sessions": sessions, "seconds": round(elapsed, 1), "redis_bytes": spent,
            "bytes_per_stream_second": round(per_stream), "requests_per_stream_second": round(requests, 1),
            "scripts_per_stream_second": round(scripts, 1), "commands_incl_in_scripts_per_stream_second": round(ops, 1),
            "redis_cpu_us_per_stream_second": round(cpu_us), "by_command": {
                name: {"calls_per_stream_second": round(c / elapsed / sessions, 2),
                       "us_per_stream_second": round(u / elapsed / sessions)} for name, (c, u) in top},
            "labelled": level["labelled"], "sent": level["sent"], "dropped": level["dropped"],
            "checkpoints": round(checkpoints[0]), "checkpoint_bytes_per_stream_second":
                round(checkpoints[1] / elapsed / sessions)}


def weights_at_size(size: int, directory: Path) -> Path:
    """The bundled A0 weights with another input size in their metadata (the network is fully
    convolutional: the same weights run at any size), for a pool at the official 172 px."""
    import dataclasses

    import model

    net = model.create_model("movinet_a0_stream", weights="motion")
    net.info = dataclasses.replace(net.info, input_size=size, eval_min_size=size)
    return model.save_weights(net, directory / f"movinet_a0_stream_motion{size}.safetensors")


def worker_holding(redis: RedisServer, session_id: str, workers: list) -> tuple[str, int, subprocess.Popen]:
    """The worker process whose id (host-pid-random) holds the session's lease."""
    import redis as redis_py

    from service.store import keys

    holder = redis_py.Redis.from_url(redis.url).get(keys.lease(session_id)).decode().split()[0]
    return next(entry for entry in workers if f"-{entry[2].pid}-" in holder)


async def _failover_once(pool: PoolProcs, gateway: str, workers: list, frames: list[bytes]) -> float:
    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(timeout=30) as http:
        session = (await http.post(f"{gateway}/sessions", json={})).json()
    arrivals: list[float] = []
    async with connect(f"{session['frames_url']}?token={session['token']}", max_size=None) as ws:
        await ws.recv()

        async def receive() -> None:
            async for raw in ws:
                if json.loads(raw)["type"] == "result":
                    arrivals.append(time.monotonic())

        receiver = asyncio.create_task(receive())
        started, killed_at, k = time.monotonic(), None, 0
        while k < 60:
            await asyncio.sleep(max(0.0, started + k / 5.0 - time.monotonic()))
            await ws.send(json.dumps({"type": "frame", "pts": k / 5.0}))
            await ws.send(frames[k % len(frames)])
            k += 1
            if k == 20:  # 4 s in: kill whoever holds it
                victim = await asyncio.to_thread(worker_holding, pool.redis, session["session_id"], workers)
                victim[2].send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                victim[2].wait(10)
                workers.remove(victim)
        await asyncio.sleep(3)
        receiver.cancel()
    async with httpx.AsyncClient(timeout=30) as http:
        await http.delete(f"{gateway}/sessions/{session['session_id']}",
                          headers={"Authorization": f"Bearer {session['token']}"})
    after = [t for t in arrivals if t > killed_at]
    return (after[0] - killed_at) if after else float("inf")


def failover(pool: PoolProcs, gateway: str, frames: list[bytes], repeats: int) -> dict:
    workers = [p for p in pool.procs if p[0] == "worker" and p[2].poll() is None]
    times = []
    for _ in range(repeats):
        while len(workers) < 2:
            workers.append(pool.start("worker"))
        for entry in workers:
            pool.wait_ready(entry[1])
        seconds = asyncio.run(_failover_once(pool, gateway, workers, frames))
        times.append(seconds)
        print(f"failover: kill -> next label {seconds:.2f} s", flush=True)
    return {"repeats": repeats, "seconds": [round(t, 3) for t in times], "median_s": round(float(np.median(times)), 3),
            "max_s": round(max(times), 3)}


def capacity(gateway: str, frames: list[bytes], levels: list[int], duration: float, target_ms: float) -> dict:
    rows = []
    for sessions in levels:
        level = asyncio.run(service_load.run_level(gateway, sessions, {}, frames, 5.0, duration, 3.0, None))
        held = level["dropped"] == 0 and level["labelled"] >= level["sent"] and (level["p99_ms"] or 1e9) < target_ms
        level["held"] = held
        rows.append({k: v for k, v in level.items() if k not in ("mean_batch", "forward_ms", "forward_busy")})
        print(f"capacity: {sessions} sessions on 1 worker: p50 {level['p50_ms']:.0f} ms, p99 {level['p99_ms']:.0f} ms, "
              f"dropped {level['dropped']}, {'held' if held else 'NOT held'}", flush=True)
        if not held:
            break
    best = max([r["sessions"] for r in rows if r["held"]], default=0)
    return {"levels": rows, "most_sessions_held": best}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("state", "frames", "traffic", "capacity", "failover"), action="append")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the gateway and worker (e.g. MOVINET_CHECKPOINT_EVERY=150)")
    parser.add_argument("--quick", action="store_true", help="shorter runs (smoke test of the script)")
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 4, 8, 12, 16])
    parser.add_argument("--target-p99-ms", type=float, default=300.0)
    parser.add_argument("--torch-threads", type=int, default=0, help="worker torch threads (0 = torch default)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each traffic level")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4], help="traffic levels (streams at once)")
    parser.add_argument("--size", type=int, default=0, help="serve the bundled A0 at this input size (e.g. 172)")
    parser.add_argument("--video", type=Path, default=service_load.DEFAULT_VIDEO, help="the clip the cameras stream")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    parts = set(args.only or ("state", "frames", "traffic", "capacity", "failover"))
    summary: dict = {"settings": "defaults: lease 2000 ms, checkpoint every 25 frames, fp32 checkpoints"
                     + "".join(f", {item}" for item in args.env) + (f", {args.size} px" if args.size else "")
                     + f", {args.video.name}"}
    if "state" in parts:
        summary["state"] = state_sizes()
    if "frames" in parts:
        summary["frames"] = frame_sizes()
    if parts - {"state", "frames"}:
        frames = service_load.load_frames(args.video, 5.0)
        with tempfile.TemporaryDirectory() as tmp:
            redis = RedisServer(Path(tmp) / "redis").start()
            env = {"MOVINET_LOG_LEVEL": "warning", **dict(item.split("=", 1) for item in args.env)}
            if args.size:
                env["MOVINET_WEIGHTS"] = str(weights_at_size(args.size, Path(tmp)))
            if args.torch_threads:
                env["MOVINET_TORCH_THREADS"] = str(args.torch_threads)
            pool = PoolProcs(redis, Path(tmp), env)
            try:
                _, gateway_port, _ = pool.start("gateway")
                first = pool.start("worker")
                for port in (gateway_port, first[1]):
                    pool.wait_ready(port)
                gateway = f"http://127.0.0.1:{gateway_port}"
                duration = 8.0 if args.quick else args.duration
                if "traffic" in parts:
                    summary["traffic"] = [traffic(pool, gateway, frames, n, duration) for n in args.streams]
                if "capacity" in parts:
                    levels = args.levels[:2] if args.quick else args.levels
                    summary["capacity"] = capacity(gateway, frames, levels, 10.0 if args.quick else 20.0,
                                                   args.target_p99_ms)
                if "failover" in parts:
                    summary["failover"] = failover(pool, gateway, frames, 2 if args.quick else 5)
            finally:
                pool.stop()
                redis.kill()
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
