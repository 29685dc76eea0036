"""Soak: many sessions for minutes; memory, descriptors, threads and Redis keys stay flat.

    python benchmarks/soak.py [--sessions 100] [--minutes 10] [--fps 1] [--json out.json]

One gateway and one worker on a local Redis (shipped defaults). Each session streams the test
video, looped, at ``--fps`` in real time (a 5 fps model repeats frames to fill gaps under 1 s: at
1 fps a session costs 5 model frames a second, at 0.5 fps or less one per frame sent); a tenth of the sessions are closed and opened again
every minute (churn). Every 10 s it samples the gateway's and the worker's RSS, open descriptors
and threads (``/proc``) and Redis' key count. After warm-up (the first 20 %) each series must
stay within a stated slack of its warm-up level; after every session is deleted, Redis must hold
only the worker's heartbeat key. Loopback only, bounded, stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis as redis_py  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from tests.pool.conftest import Pool, video_frames, ws_url  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SHIPPED = {"MOVINET_CHECKPOINT_EVERY": "25"}


async def create(gateway, until: float, refusals: list[int]) -> dict | None:
    """A new session, waiting out refusals (503 saturated, 429) as their Retry-After says."""
    async with httpx.AsyncClient(timeout=30) as client:
        while time.monotonic() < until:
            response = await client.post(gateway.url + "/sessions", json={})
            if response.status_code == 201:
                return response.json()
            if response.status_code not in (429, 503):
                raise RuntimeError(f"create refused: {response.status_code} {response.text}")
            refusals.append(response.status_code)
            await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
    return None


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def stream(gateway, session, frames, fps: float, until: float, closes: list[str]) -> int:
    """Stream until ``until``; a close by the server ends the stay early (counted in ``closes``)."""
    sent = 0
    async with connect(ws_url(gateway, session), max_size=2**24) as ws:
        await ws.recv()

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        try:
            while time.monotonic() < until:
                pts, data = frames[sent % len(frames)]
                await ws.send(json.dumps({"type": "frame", "pts": sent / fps}))
                await ws.send(data)
                sent += 1
                await asyncio.sleep(1.0 / fps)
        except ConnectionClosed as exc:
            closes.append(f"{exc.rcvd.code if exc.rcvd else None} {exc.rcvd.reason if exc.rcvd else ''}"[:80])
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--slack", type=float, default=0.15, help="allowed growth over the warm-up level")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    frames = video_frames(40)
    directory = Path(tempfile.mkdtemp(prefix="movinet-soak-"))
    redis = RedisServer(directory / "redis").start()
    pool = Pool(redis, directory)
    samples: list[dict] = []
    try:
        # Every session comes from this one address: its quota (64 by default) is raised to the
        # soak's count, the one setting that differs from the shipped ones.
        (gateway,), (worker,) = pool.up(gateways=1, workers=1, **SHIPPED,
                                        MOVINET_MAX_SESSIONS_PER_CLIENT=str(max(64, args.sessions)))
        client = redis_py.Redis.from_url(redis.url)
        baseline_keys = client.dbsize()
        end = time.monotonic() + args.minutes * 60
        rng = random.Random(5)

        refusals: list[int] = []
        closes: list[str] = []

        async def one_slot(index: int) -> int:
            sent = 0
            async with httpx.AsyncClient(timeout=30) as http:
                while time.monotonic() < end:
                    session = await create(gateway, end, refusals)
                    if session is None:
                        break
                    stay = time.monotonic() + rng.uniform(30, 120)  # churn: sessions come and go
                    sent += await stream(gateway, session, frames, args.fps, min(stay, end), closes)
                    await http.delete(f"{gateway.url}/sessions/{session['session_id']}",
                                      headers={"Authorization": f"Bearer {session['token']}"})
            return sent

        async def sampler() -> None:
            while time.monotonic() < end:
                sample = {"t_s": round(args.minutes * 60 - (end - time.monotonic()), 1),
                          "redis_keys": client.dbsize(),
                          "gateway": proc_stats(gateway.process.pid), "worker": proc_stats(worker.process.pid)}
                samples.append(sample)
                print(json.dumps(sample), flush=True)
                await asyncio.sleep(10)

        async def run() -> list[int]:
            task = asyncio.create_task(sampler())
            sent = await asyncio.gather(*(one_slot(i) for i in range(args.sessions)))
            await task
            return sent

        sent = asyncio.run(run())
        time.sleep(3)
        left = client.dbsize()
        leftover = [k.decode() for k in client.keys("*") if not k.decode().startswith("movinet:worker:")]
        warm = samples[max(1, len(samples) // 5):]
        report = {"sessions": args.sessions, "minutes": args.minutes, "fps": args.fps, "frames_sent": sum(sent),
                  "creates_refused": len(refusals), "closed_by_server": len(closes),
                  "close_reasons": sorted(set(closes))[:5],
                  "redis_keys_before": baseline_keys, "redis_keys_after": left, "leftover_keys": leftover[:20]}
        flat = True
        for role in ("gateway", "worker"):
            for name in ("rss_kb", "fds", "threads"):
                series = [s[role][name] for s in warm]
                level, peak = series[0], max(series)
                report[f"{role}_{name}"] = {"warm": level, "peak": peak, "last": series[-1]}
                flat &= peak <= level * (1 + args.slack) + (8 if name != "rss_kb" else 0)
        report["flat"] = flat
        report["nothing_left"] = not leftover
        print(json.dumps(report), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"report": report, "samples": samples}, indent=1))
        return 0 if flat and not leftover and not closes else 1
    finally:
        pool.stop()
        redis.kill()


if __name__ == "__main__":
    sys.exit(main())
