"""Exactly once across worker crashes: SIGKILLed workers, resumed sessions, identical labels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import threading
import time

import httpx
import redis as redis_py
import websockets

from service.store import keys
from tests.pool.conftest import (
    Pool,
    assert_same_labels,
    connect_producer,
    results_of,
    stream_frames,
    video_frames,
    ws_url,
)

FRAMES = 40  # 8 s of the test video at 5 fps: two motions


def test_labels_survive_sigkilled_workers_seq_for_seq(pool: Pool):
    gateways, workers = pool.up(gateways=2, workers=3)
    frames = video_frames(FRAMES)

    # The uninterrupted run: one session, no kills.
    reference = results_of(asyncio.run(stream_frames(gateways[0], pool.create(gateways[0]), frames)))
    assert [r["seq"] for r in reference] == list(range(1, FRAMES + 1))
    assert len({r["labels"][0]["name"] for r in reference}) >= 2  # the motions change: real labels

    # Three sessions through both gateways while the worker holding one of them (picked at random,
    # found through its lease in Redis) is SIGKILLed at random moments, and restarted.
    sessions = [(gw, pool.create(gw)) for gw in (gateways[0], gateways[1], gateways[0])]
    kills: list[float] = []
    stop = threading.Event()
    rng = random.Random(7)
    redis = redis_py.Redis.from_url(pool.redis.url)

    def chaos() -> None:
        while not stop.wait(rng.uniform(1.0, 2.0)):
            lease = redis.get(keys.lease(rng.choice(sessions)[1]["session_id"]))
            holder = lease.decode().split()[0] if lease else ""
            victim = next((w for w in workers if w.alive() and f"-{w.process.pid}-" in holder), None)
            if victim is not None:
                victim.kill()
                kills.append(time.monotonic())
                victim.start()  # a new process, a new worker id: it resumes from checkpoints

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()

    async def all_sessions():
        # Paced (~12 s of sending), so that the kills fall while the sessions stream, however fast the machine.
        return await asyncio.gather(*(stream_frames(gw, s, frames, timeout=180, pace_s=0.3) for gw, s in sessions))

    try:
        runs = asyncio.run(all_sessions())
    finally:
        stop.set()
        thread.join(10)
    assert len(kills) >= 4, kills
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


def test_a_frozen_worker_that_wakes_up_cannot_commit(pool: Pool):
    """Fencing with real processes: SIGSTOP the worker holding a session past its lease, let another
    take over, SIGCONT the first: its commits are refused and the labels stay those of one run."""
    (gateway,), workers = pool.up(gateways=1, workers=2)
    frames = video_frames(FRAMES)
    reference = results_of(asyncio.run(stream_frames(gateway, pool.create(gateway), frames)))
    session = pool.create(gateway)
    frozen: list = []

    def freeze_the_holder() -> None:
        holder = pool.holder(session["session_id"], workers)
        time.sleep(0.5)  # let it process a few frames first
        holder.process.send_signal(signal.SIGSTOP)
        frozen.append(holder)
        time.sleep(2.5)  # > the 1 s lease: the other worker takes over meanwhile
        holder.process.send_signal(signal.SIGCONT)

    thread = threading.Thread(target=freeze_the_holder, daemon=True)
    thread.start()
    messages = asyncio.run(stream_frames(gateway, session, frames, timeout=120, pace_s=0.15))
    thread.join(30)
    assert frozen, "the session was never leased"
    assert_same_labels(results_of(messages), reference)
    deadline = time.monotonic() + 15  # the thawed worker notices at its next renew or commit
    while not (lost := [e for e in pool.events("lease_lost") if e["session_id"] == session["session_id"]]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert lost and all(e["reason"] == "stale" for e in lost), lost
    holders = {e["worker"] for e in pool.events("lease_taken") if e["session_id"] == session["session_id"]}
    assert len(holders) == 2, holders


def test_labels_resume_on_another_gateway_after_a_gateway_dies(pool: Pool):
    """Gateways are stateless: a watcher whose gateway is SIGKILLed reconnects to another one with
    ``after_seq`` and gets the rest, no gap and no duplicate; the producer reconnects too."""
    gateways, _ = pool.up(gateways=2, workers=1)
    frames = video_frames(FRAMES)
    session = pool.create(gateways[0])
    seen: list[int] = []

    async def watch() -> None:
        for gateway in (gateways[1], gateways[0]):  # gateway 1 dies halfway; then gateway 0
            url = ws_url(gateway, session, "labels", after_seq=seen[-1] if seen else 0)
            try:
                async with websockets.connect(url) as ws:
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "result":
                            seen.append(message["seq"])
                            if message["seq"] == FRAMES:
                                return
            except websockets.ConnectionClosed:
                continue

    async def produce() -> None:
        half = FRAMES // 2
        first = await stream_frames(gateways[1], session, frames[:half])
        assert results_of(first)[-1]["seq"] == half
        while len(seen) < half // 2:
            await asyncio.sleep(0.05)
        gateways[1].kill()  # SIGKILL: its sockets die without a goodbye
        rest = [(pts, data) for pts, data in frames[half:]]
        await stream_frames(gateways[0], session, rest)

    async def both() -> None:
        watcher = asyncio.create_task(watch())
        await produce()
        await asyncio.wait_for(watcher, 60)

    asyncio.run(both())
    assert seen == list(range(1, FRAMES + 1))


def test_one_producer_per_session_across_gateways(pool: Pool):
    gateways = pool.add("gateway", 2)
    for proc in gateways:
        proc.wait_ready()
    session = pool.create(gateways[0])

    async def scenario() -> tuple[dict, int]:
        async with websockets.connect(ws_url(gateways[0], session)) as first:
            assert json.loads(await first.recv())["type"] == "session"
            status = await asyncio.to_thread(httpx.get, f"{gateways[1].url}/sessions/{session['session_id']}",
                                             params={"token": session["token"]})
            assert status.json()["state"] == "streaming"  # seen from the other gateway
            async with websockets.connect(ws_url(gateways[1], session)) as second:
                refused = json.loads(await second.recv())
                with contextlib.suppress(websockets.ConnectionClosed):
                    await second.recv()
                return refused, second.close_code

    refused, code = asyncio.run(scenario())
    assert (refused["code"], code) == ("stream_in_use", 4409)
    other = httpx.get(f"{gateways[1].url}/sessions/{session['session_id']}", params={"token": session["token"]})
    assert other.json()["state"] == "idle"  # the first producer has gone

    async def after_the_first_left() -> str:  # released on disconnect: the other gateway takes it at once
        async with websockets.connect(ws_url(gateways[1], session)) as ws:
            return json.loads(await ws.recv())["type"]

    assert asyncio.run(after_the_first_left()) == "session"


def test_a_session_goes_on_after_a_persistent_redis_is_killed_and_restarted(tmp_path):
    """Redis with an append-only file is SIGKILLed mid-stream and restarted: the gateway and the
    worker ride it out, the session continues where it was (frames sent while Redis was away are
    lost and reported), and the client sees every seq once, in order."""
    from tests.redis_server import RedisServer

    redis = RedisServer(tmp_path / "redis", appendonly=True).start()
    pool = Pool(redis, tmp_path)
    try:
        (gateway,), (worker,) = pool.up(gateways=1, workers=1)
        frames = video_frames(30)
        session = pool.create(gateway)

        async def scenario() -> list[dict]:
            messages: list[dict] = []

            async def send(chunk) -> None:
                for pts, data in chunk:
                    await ws.send(json.dumps({"type": "frame", "pts": pts}))
                    await ws.send(data)
                    await asyncio.sleep(0.05)

            async def until_results(count: int) -> None:
                while len(results_of(messages)) < count:
                    messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))

            async with await connect_producer(gateway, session) as ws:
                await send(frames[:10])
                await until_results(10)
                redis.kill()
                await send(frames[10:15])  # lost: the store is away (the socket stays open)
                redis.start()
                await asyncio.sleep(1.0)
                await send(frames[15:])
                await ws.send(json.dumps({"type": "eos"}))
                async for raw in ws:
                    messages.append(json.loads(raw))
            return messages

        messages = asyncio.run(asyncio.wait_for(scenario(), 120))
        results = results_of(messages)
        seqs = [r["seq"] for r in results]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 20, seqs  # nothing twice, no gap
        assert "store_unavailable" in [m.get("code") for m in messages if m["type"] == "error"]
        assert messages[-1]["type"] == "eos" and messages[-1]["complete"], messages[-2:]
        assert [r["frame_index"] for r in results][:10] == list(range(10))
        assert gateway.alive() and worker.alive()
    finally:
        pool.stop()
        redis.kill()


def test_redis_restart_without_persistence_is_reported_not_hung(pool: Pool):
    """Redis dies and comes back empty: gateways and workers stay up, say not-ready meanwhile, and
    the client is told its session was lost (close 4410) instead of waiting forever; new sessions work."""
    (gateway,), (worker,) = pool.up(gateways=1, workers=1)
    frames = video_frames(10)
    session = pool.create(gateway)

    async def scenario() -> tuple[list[dict], int]:
        messages: list[dict] = []
        async with websockets.connect(ws_url(gateway, session), max_size=None) as ws:
            await ws.recv()
            for pts, data in frames[:5]:
                await ws.send(json.dumps({"type": "frame", "pts": pts}))
                await ws.send(data)
            while len(results_of(messages)) < 5:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            pool.redis.kill()
            await asyncio.sleep(1.0)
            for pts, data in frames[5:7]:  # lost: the store is away
                await ws.send(json.dumps({"type": "frame", "pts": pts}))
                await ws.send(data)
            ready_while_down = httpx.get(gateway.url + "/readyz", timeout=5).status_code
            worker_ready_while_down = httpx.get(worker.url + "/readyz", timeout=5).status_code
            assert (ready_while_down, worker_ready_while_down) == (503, 503)
            assert httpx.post(gateway.url + "/sessions", json={}, timeout=5).status_code == 503
            pool.redis.start()
            try:
                async for raw in ws:
                    messages.append(json.loads(raw))
            except websockets.ConnectionClosed:
                pass
            return messages, ws.close_code

    messages, close_code = asyncio.run(asyncio.wait_for(scenario(), 90))
    codes = [m.get("code") for m in messages if m["type"] == "error"]
    assert "store_unavailable" in codes and codes[-1] == "session_lost", codes
    assert close_code == 4410
    assert gateway.alive() and worker.alive()
    gateway.wait_ready(30)
    worker.wait_ready(30)
    fresh = pool.create(gateway)
    after = results_of(asyncio.run(stream_frames(gateway, fresh, frames)))
    assert [r["seq"] for r in after] == list(range(1, 11))


def test_sigterm_drains_a_worker_its_sessions_move_without_replay(pool: Pool):
    """SIGTERM: the worker stops claiming, checkpoints and releases its sessions, and exits within
    the drain bound; the next worker resumes from that checkpoint (nothing to replay)."""
    (gateway,), workers = pool.up(gateways=1, workers=2)
    frames = video_frames(FRAMES)
    reference = results_of(asyncio.run(stream_frames(gateway, pool.create(gateway), frames)))
    session = pool.create(gateway)
    exits: list[float] = []

    def drain_the_holder() -> None:
        process = pool.holder(session["session_id"], workers).process
        time.sleep(0.5)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        exits.append(time.monotonic() - started)

    thread = threading.Thread(target=drain_the_holder, daemon=True)
    thread.start()
    # Paced (~6 s), so that frames are still coming when the holder drains: the other worker resumes.
    messages = asyncio.run(stream_frames(gateway, session, frames, timeout=120, pace_s=0.15))
    thread.join(40)
    assert exits and exits[0] < 10.0, exits
    assert_same_labels(results_of(messages), reference)
    released = [e for e in pool.events("lease_released") if e["session_id"] == session["session_id"]]
    assert released and released[0]["reason"] == "drain", released
    resumed = [e for e in pool.events("lease_taken")
               if e["session_id"] == session["session_id"] and int(e["token"]) > 1]
    assert resumed and resumed[0]["replayed"] == "0" and resumed[0]["checkpoint_seq"] == released[0]["seq"], resumed


def test_a_camera_is_pulled_by_one_gateway_and_another_takes_over_when_it_dies(pool: Pool):
    """RTSP with several gateways: the session's producer slot (in Redis) lets exactly one gateway
    pull the camera; when that gateway is SIGKILLed, another one takes the pull over and the labels
    go on."""
    from tests.service.sources import VIDEO, RtspCamera, gst_rtsp_available, require

    require(gst_rtsp_available(), "gst-rtsp-server (python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer plugins)")
    camera = RtspCamera(VIDEO).start()
    try:
        gateways, _ = pool.up(gateways=2, workers=1, MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES="true")
        session = pool.create(gateways[0], source={"type": "rtsp", "url": camera.url, "transport": "tcp"})
        seen: list[int] = []

        async def watch(until: int, timeout: float) -> None:
            url = ws_url(gateways[1], session, "labels", after_seq=seen[-1] if seen else 0)
            async with websockets.connect(url) as ws:
                async def read() -> None:
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "result":
                            seen.append(message["seq"])
                            if len(seen) >= until:
                                return
                await asyncio.wait_for(read(), timeout)

        asyncio.run(watch(10, 60))  # gateway 0 pulls; gateway 1 serves the labels from Redis
        pullers = [e for e in pool.events("rtsp_started") if e["session_id"] == session["session_id"]]
        assert len(pullers) == 1, pullers  # gateway 1 saw the session every second and left it alone
        gateways[0].kill()
        asyncio.run(watch(20, 60))  # labels resume: gateway 1 took the camera over
        taken = [e for e in pool.events("camera_taken_over") if e["session_id"] == session["session_id"]]
        assert len(taken) == 1, taken
        assert seen == sorted(set(seen)) and len(seen) >= 20
    finally:
        camera.kill()


def test_the_python_client_reconnects_when_its_gateway_restarts(pool: Pool):
    """``MovinetClient.stream`` rides out a gateway SIGKILLed and restarted on the same address
    (as behind a load balancer): it reconnects, resumes the labels after the last one it had,
    and finishes the video; no label comes twice."""
    from service.client import MovinetClient, model_frames, open_source
    from tests.pool.conftest import VIDEO

    (gateway,), _ = pool.up(gateways=1, workers=1)
    client = MovinetClient(gateway.url)
    restarted: list[float] = []
    arrivals: list[float] = []

    def restart_soon() -> None:
        time.sleep(3.0)
        pool.restart(gateway)  # SIGKILL, then the same command on the same port
        restarted.append(time.monotonic())

    async def scenario():
        session = await client.create_session()
        container = open_source(str(VIDEO))
        threading.Thread(target=restart_soon, daemon=True).start()
        try:
            return await client.stream(session, model_frames(container, session["frame_rate"]), realtime=True,
                                       max_frames=50, reconnect_for=60,
                                       on_message=lambda m: m["type"] == "result" and arrivals.append(time.monotonic()))
        finally:
            container.close()

    summary = asyncio.run(scenario())
    seqs = [r["seq"] for r in summary.results]
    assert summary.reconnects >= 1 and summary.complete, (summary.reconnects, summary.close_code)
    assert seqs == sorted(set(seqs)) and summary.frames_sent == 50, (seqs, summary.frames_sent)
    indices = [r["frame_index"] for r in summary.results]
    assert indices == sorted(set(indices))
    assert sum(t > restarted[0] for t in arrivals) >= 10  # labels went on after the restart
    assert len(seqs) + summary.dropped >= 40  # what was lost: frames in flight when the gateway died
