"""Failover with the shipped defaults: live sessions while workers are SIGKILLed, for minutes.

    python benchmarks/failover.py [--sessions 20] [--minutes 3] [--workers 3] [--kill-every 3 6]

A pool of 2 gateways and N workers on one local Redis, every setting at its shipped default (lease
2 s, backlog 10 s, checkpoints every 25 frames; one torch thread per worker, as they share the
cores). The sessions stream the committed test video, looped, at 5 fps in real time (a live
camera: the client never waits for labels), through both gateways; every few seconds the worker
holding a random session is SIGKILLed and started again (while the others are ready: one failure
at a time, as a pool of N+1 is sized for). At the end every session's labels are
compared with a calm run of the same frames, seq by seq, and its drops are counted.

Prints a line per session and a summary; ``--json PATH`` writes it too. Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis as redis_py  # noqa: E402

from service.store import keys  # noqa: E402
from tests.pool.conftest import Pool, assert_same_labels, results_of, stream_frames, video_frames  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

# The pool tests set checkpoint_every to 7 (the setting under test there); here every setting is
# the shipped one.
SHIPPED = {"MOVINET_CHECKPOINT_EVERY": "25"}


def looped(frames: list[tuple[float, bytes]], count: int, fps: float = 5.0) -> list[tuple[float, bytes]]:
    return [(round(i / fps, 6), frames[i % len(frames)][1]) for i in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 6.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    frames = looped(video_frames(40), int(args.minutes * 60 * 5))
    directory = Path(tempfile.mkdtemp(prefix="movinet-failover-"))
    redis = RedisServer(directory / "redis").start()
    pool = Pool(redis, directory)
    try:
        gateways, workers = pool.up(gateways=2, workers=args.workers, **SHIPPED)
        print(f"pool up: 2 gateways, {args.workers} workers, logs in {directory}", flush=True)
        calm_session = pool.create(gateways[0])
        reference = results_of(asyncio.run(stream_frames(gateways[0], calm_session, frames, in_flight=24,
                                                         timeout=600)))
        print(f"calm run: {len(reference)} labels", flush=True)
        sessions = [(gateways[i % 2], pool.create(gateways[i % 2])) for i in range(args.sessions)]
        kills: list[float] = []
        stop = threading.Event()
        rng = random.Random(11)
        client = redis_py.Redis.from_url(redis.url)

        def ready(worker) -> bool:
            try:
                return worker.alive() and httpx.get(worker.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        def chaos() -> None:
            while not stop.wait(rng.uniform(*args.kill_every)):
                lease = client.get(keys.lease(rng.choice(sessions)[1]["session_id"]))
                holder = lease.decode().split()[0] if lease else ""
                victim = next((w for w in workers if w.alive() and f"-{w.process.pid}-" in holder), None)
                # One failure at a time: the killed worker's sessions need a live one to go to (a
                # restarted worker takes 10 s and more to load its model on two busy cores).
                if victim is not None and all(ready(w) for w in workers if w is not victim):
                    victim.kill()
                    kills.append(time.monotonic())
                    victim.start()

        async def all_sessions():
            return await asyncio.gather(*(stream_frames(gw, s, frames, in_flight=10**6, timeout=args.minutes * 60 + 300,
                                                        pace_s=0.2) for gw, s in sessions))

        started = time.monotonic()
        thread = threading.Thread(target=chaos, daemon=True)
        thread.start()
        try:
            runs = asyncio.run(all_sessions())
        finally:
            stop.set()
            thread.join(10)
        elapsed = time.monotonic() - started
        rows = []
        for (gateway, session), messages in zip(sessions, runs, strict=True):
            status = httpx.get(f"{gateway.url}/sessions/{session['session_id']}",
                               params={"token": session["token"]}, timeout=10).json()
            results = results_of(messages)
            try:
                assert_same_labels(results, reference)
                same = True
            except AssertionError:
                same = False
            lags = sorted(r["lag_ms"] for r in results)
            rows.append({"session_id": session["session_id"], "labels": len(results), "same_as_calm": same,
                         "dropped": status["frames_dropped"], "p50_lag_ms": lags[len(lags) // 2] if lags else None,
                         "p99_lag_ms": lags[int(0.99 * (len(lags) - 1))] if lags else None})
            print(f"  {rows[-1]}", flush=True)
        takeovers = [e for e in pool.events("lease_taken") if int(e.get("processed_seq", 0)) > 0]
        summary = {
            "sessions": args.sessions, "frames_per_session": len(frames), "minutes": round(elapsed / 60, 2),
            "kills": len(kills), "takeovers": len(takeovers),
            "sessions_equal_to_calm": sum(r["same_as_calm"] for r in rows),
            "frames_dropped": sum(r["dropped"] for r in rows),
            "worst_p99_lag_ms": max((r["p99_lag_ms"] or 0) for r in rows),
        }
        print(json.dumps(summary), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"summary": summary, "sessions": rows}, indent=1))
        return 0 if summary["sessions_equal_to_calm"] == args.sessions and summary["frames_dropped"] == 0 else 1
    finally:
        pool.stop()
        redis.kill()


if __name__ == "__main__":
    sys.exit(main())
