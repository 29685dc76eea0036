"""The worker loop's throughput: N sessions with frames waiting, through the real InferenceLoop.

    .venv/bin/python benchmarks/worker_tick.py [--sessions 1 8 64 256] [--frames 20] [--json out.json]
    python benchmarks/worker_tick.py --tree /path/to/an/older/checkout   # the same, on another version

Every session has ``--frames`` model frames logged in the in-memory store before the clock starts;
the loop claims them all and runs ticks (one frame per session per tick, one forward per model
group) until every frame is committed. Prints session-frames/s and ms per tick for each N: the
whole tick (claim, take, the runner's forward, results, commits), not the model alone. With
``--tree`` the script runs against that checkout's ``service`` and ``model`` packages (the API of
before the redesign is supported), so two versions compare side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--model", default="movinet_a0_stream")
    parser.add_argument("--weights", default="motion")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.tree.resolve()))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from service.metrics import Metrics
    from service.registry import ModelRegistry
    from service.settings import Settings
    from service.store import Frame, SessionRecord
    from service.store.memory import memory_store

    new_api = Path(args.tree, "service", "worker", "loop.py").exists()
    if new_api:
        from service.options import BackpressureOptions, SessionOptions
        from service.worker.loop import InferenceLoop
    else:
        from service.inference import InferenceLoop

    registry = ModelRegistry(args.model, args.weights, allow_random_weights=False)
    loaded = asyncio.run(registry.load(args.model, args.weights))
    size = loaded.input_size
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8).tobytes() for _ in range(8)]
    rows = []
    for count in args.sessions:
        async def level(count: int = count) -> dict:
            store = memory_store()
            settings = Settings(worker_max_sessions=max(count, 64), max_batch=max(count, 64), release_idle_s=60)
            if new_api:
                loop = InferenceLoop(settings, store, registry, Metrics())
                streams = store.streams
            else:
                loop = InferenceLoop(store, registry, Metrics(), max_batch=settings.max_batch,
                                     max_sessions=settings.worker_max_sessions, release_idle_s=60)
                streams = store.frames
            now = time.time()
            for s in range(count):
                sid = f"s{s}"
                if new_api:
                    options = SessionOptions(backpressure=BackpressureOptions(max_backlog=10_000))
                else:
                    options = {"source": {"type": "websocket"}, "top_k": 5, "min_score": 0.0, "smoothing": 0.0,
                               "window": {"policy": "windowed", "frames": loaded.clip_frames},
                               "backpressure": {"policy": "drop_oldest", "max_backlog": 10_000}}
                await store.sessions.create(SessionRecord(session_id=sid, token_hash="h", model=loaded.name,
                                                          weights=loaded.weights, options=options, created_at=now,
                                                          idle_timeout_s=600, last_active_at=now))
                for i in range(args.frames):
                    frame = Frame(pts=i / 5, frame_index=i, received_at=time.time(), height=size, width=size,
                                  data=pictures[(s + i) % len(pictures)])
                    if new_api:
                        await streams.append(sid, frame, keep=10_000)
                    else:
                        await streams.append(sid, frame, max_backlog=10_000, policy="drop_oldest")
            tick = getattr(loop, "tick", None) or loop._tick  # the loop of before the redesign: _tick
            await tick()  # claims everything (and warms the batch size up)
            total = count * args.frames
            started, ticks = time.perf_counter(), 0
            while True:
                records = [await store.sessions.get(f"s{s}") for s in range(count)]
                if sum(r.frames_processed for r in records) >= total:
                    break
                await tick()
                ticks += 1
            elapsed = time.perf_counter() - started
            await loop.stop()
            done = sum(r.frames_processed for r in records)
            return {"sessions": count, "session_frames_per_s": round(done / elapsed, 1),
                    "ms_per_tick": round(1000 * elapsed / max(1, ticks), 2), "ticks": ticks}

        row = asyncio.run(level())
        rows.append(row)
        print(f"{row['sessions']:4d} sessions: {row['session_frames_per_s']:8.1f} session-frames/s  "
              f"{row['ms_per_tick']:7.2f} ms per tick", flush=True)
    result = {"tree": "redesign" if new_api else "before", "model": args.model, "weights": args.weights,
              "input_size": size, "threads": args.threads, "rows": rows}
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
