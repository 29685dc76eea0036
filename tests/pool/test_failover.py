"""Exactly once across worker crashes: SIGKILLed workers, resumed sessions, identical labels."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import httpx

from tests.pool.conftest import Pool, assert_same_labels, results_of, stream_frames, video_frames

FRAMES = 40  # 8 s of the test video at 5 fps: two motions


def test_labels_survive_sigkilled_workers_seq_for_seq(pool: Pool):
    gateways = pool.add("gateway", 2)
    workers = pool.add("worker", 3)
    for proc in gateways + workers:
        proc.wait_ready()
    frames = video_frames(FRAMES)

    # The uninterrupted run: one session, no kills.
    reference = results_of(asyncio.run(stream_frames(gateways[0], pool.create(gateways[0]), frames)))
    assert [r["seq"] for r in reference] == list(range(1, FRAMES + 1))
    assert len({r["labels"][0]["name"] for r in reference}) >= 2  # the motions change: real labels

    # Three sessions through both gateways while workers are SIGKILLed at random moments.
    sessions = [(gw, pool.create(gw)) for gw in (gateways[0], gateways[1], gateways[0])]
    kills: list[float] = []
    stop = threading.Event()
    rng = random.Random(7)

    def chaos() -> None:
        while not stop.wait(rng.uniform(0.4, 1.2)):
            victim = rng.choice(workers)
            if victim.alive():
                victim.kill()
                kills.append(time.monotonic())
                victim.start()  # a new process, a new worker id: it resumes from checkpoints

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()

    async def all_sessions():
        return await asyncio.gather(*(stream_frames(gw, s, frames, timeout=180) for gw, s in sessions))

    try:
        runs = asyncio.run(all_sessions())
    finally:
        stop.set()
        thread.join(10)
    assert len(kills) >= 5, kills
    for messages in runs:
        assert messages[-1]["type"] == "eos" and messages[-1]["complete"], messages[-3:]
        assert_same_labels(results_of(messages), reference)

    # Sessions really moved between workers mid-stream, some from a checkpoint with frames replayed.
    ids = {s["session_id"] for _, s in sessions}
    takeovers = [e for e in pool.events("lease_taken") if e["session_id"] in ids and int(e["processed_seq"]) > 0]
    assert len(takeovers) >= 2, takeovers
    assert any(int(e["checkpoint_seq"]) > 0 for e in takeovers), takeovers
    assert any(int(e["replayed"]) > 0 for e in takeovers), takeovers
    status = [httpx.get(f"{gw.url}/sessions/{s['session_id']}", params={"token": s["token"]}).json()
              for gw, s in sessions]
    assert all(st["frames_processed"] == FRAMES and st["frames_dropped"] == 0 for st in status), status
