"""The worker loop on the in-memory store, without a server: claim, batch, commit, resume."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from model.state import state_and_metadata_from_bytes
from service.metrics import Metrics
from service.options import EventOptions, SessionOptions, WindowOptions
from service.registry import ModelRegistry
from service.settings import Settings
from service.store import Frame, SessionRecord, Store
from service.store.memory import memory_store
from service.worker.loop import InferenceLoop
from tests.service.conftest import TEST_MODEL, TEST_WEIGHTS

pytestmark = pytest.mark.anyio

SIZE = 32


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry("movinet_test_stream", None, allow_random_weights=True, device="cpu", )


def settings(**overrides) -> Settings:
    return Settings(model="movinet_test_stream", allow_random_weights=True,
                    checkpoint_every=4, release_idle_s=60, **overrides)


async def add_session(store: Store, registry: ModelRegistry, session_id: str, frames: int, seed: int) -> None:
    loaded = await registry.load(TEST_MODEL, TEST_WEIGHTS)
    now = time.time()
    options = SessionOptions(top_k=3, window=WindowOptions(frames=6),
                             events=EventOptions(enter_score=0.2, exit_score=0.1, enter_frames=2, exit_frames=1,
                                                 update_every_s=0.4))
    await store.sessions.create(SessionRecord(session_id=session_id, token_hash="h", model=loaded.name,
                                              weights=loaded.weights, options=options, created_at=now,
                                              idle_timeout_s=60, last_active_at=now))
    rng = np.random.default_rng(seed)
    size = loaded.input_size
    for i in range(frames):
        data = rng.integers(0, 255, (size, size, 3), dtype=np.uint8).tobytes()
        await store.streams.append(session_id, Frame(pts=i / 5, frame_index=i, received_at=time.time(),
                                                     height=size, width=size, data=data), keep=1000)


async def run_until(loop: InferenceLoop, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await done():
        assert time.monotonic() < deadline, "the worker did not finish in time"
        await loop.tick()


async def labels(store: Store, session_id: str) -> list[list[tuple[int, float]]]:
    results = await store.results.read_after(session_id, 0, limit=1000)
    return [[(label["id"], label["score"]) for label in r.labels] for r in results]


async def test_sessions_at_different_positions_share_one_forward(registry):
    store, metrics = memory_store(), Metrics()
    loop = InferenceLoop(settings(), store, registry, metrics)
    await add_session(store, registry, "a", 10, seed=1)
    await add_session(store, registry, "b", 4, seed=2)
    await add_session(store, registry, "c", 7, seed=3)

    async def done():
        return [(await store.sessions.get(s)).frames_processed for s in "abc"] == [10, 4, 7]

    await run_until(loop, done)
    sizes = metrics.batch_size.labels(loop.held["a"].state.model.name)
    assert sizes._sum.get() == 21  # every frame once
    assert sizes._sum.get() / loop.ticks > 1.5  # several sessions per forward, not one by one
    # Each session alone, through a fresh worker, gives the same labels seq by seq.
    for session_id, count, seed in (("a", 10, 1), ("b", 4, 2), ("c", 7, 3)):
        alone = memory_store()
        solo = InferenceLoop(settings(), alone, registry, Metrics())
        await add_session(alone, registry, session_id, count, seed=seed)

        async def finished(store=alone, session_id=session_id, count=count):
            return (await store.sessions.get(session_id)).frames_processed == count

        await run_until(solo, finished)
        assert await labels(alone, session_id) == await labels(store, session_id)
    assert (await store.streams.checkpoint("a"))[0] == 8  # every 4 frames
    await loop.stop()


async def test_a_ticks_commits_run_beside_the_next_forward_and_stay_exact(registry):
    """The inference thread does not wait for the store: with commits of 40 ms, the next tick's
    forward runs while the last tick's commits are under way, and still every result lands once
    and in order, with the labels and the checkpoints of a worker whose commits take no time."""
    store, events = memory_store(), []
    instant = store.streams.commit

    async def slow_commit(lease, results, checkpoint, ttl_ms):
        started = time.perf_counter()
        try:
            await asyncio.sleep(0.04)
            return await instant(lease, results, checkpoint, ttl_ms)
        finally:
            events.append(("commit", started, time.perf_counter()))

    store.streams.commit = slow_commit
    loop = InferenceLoop(settings(), store, registry, Metrics())
    forward = loop.runner.forward

    def watched_forward(steps):
        started = time.perf_counter()
        try:
            return forward(steps)
        finally:
            events.append(("forward", started, time.perf_counter()))

    loop.runner.forward = watched_forward
    reference = memory_store()
    calm = InferenceLoop(settings(), reference, registry, Metrics())
    for target in (store, reference):
        await add_session(target, registry, "a", 10, seed=7)
        await add_session(target, registry, "b", 7, seed=8)

    def finished(target):
        async def done():
            return [(await target.sessions.get(s)).frames_processed for s in "ab"] == [10, 7]
        return done

    await run_until(loop, finished(store))
    await run_until(calm, finished(reference))
    commits = [(start, end) for kind, start, end in events if kind == "commit"]
    forwards = [(start, end) for kind, start, end in events if kind == "forward"]
    beside = sum(any(start < c_end and c_start < end for c_start, c_end in commits) for start, end in forwards)
    assert beside >= len(forwards) // 2, (beside, len(forwards))  # most forwards ran while commits were under way
    for session_id in "ab":
        results = await store.results.read_after(session_id, 0, limit=100)
        assert [r.seq for r in results] == list(range(1, 11 if session_id == "a" else 8))
        assert await labels(store, session_id) == await labels(reference, session_id)
        (seq, data), (calm_seq, calm_data) = (await store.streams.checkpoint(session_id),
                                              await reference.streams.checkpoint(session_id))
        assert seq == calm_seq == (8 if session_id == "a" else 4)
        tensors, meta = state_and_metadata_from_bytes(data)
        calm_tensors, calm_meta = state_and_metadata_from_bytes(calm_data)
        assert meta == calm_meta  # frames seen, counts, smoothing: the state at `seq`, not after it
        assert tensors.keys() == calm_tensors.keys()
        assert all(torch.allclose(tensors[k], calm_tensors[k], atol=1e-6) for k in tensors)
    await loop.stop()
    await calm.stop()


async def test_a_drain_does_not_wait_past_its_time_for_a_commit_that_hangs(registry):
    """The store stops answering commits during a drain: the drain cancels the commit in flight
    after its time, releases the session without its state (it is ahead of what is committed),
    and the next worker replays it to the labels of a run without a drain."""
    reference = memory_store()
    calm = InferenceLoop(settings(), reference, registry, Metrics())
    store = memory_store()
    for target in (reference, store):
        await add_session(target, registry, "a", 10, seed=9)
    await run_until(calm, lambda: _processed(reference, "a", 10))
    instant, stalled, calls = store.streams.commit, asyncio.Event(), []

    async def commit(lease, results, checkpoint, ttl_ms):
        calls.append(results[0].seq)
        if len(calls) > 5:
            await stalled.wait()  # never set: the store does not answer any more
        return await instant(lease, results, checkpoint, ttl_ms)

    store.streams.commit = commit
    first = InferenceLoop(settings(lease_ttl_ms=20_000), store, registry, Metrics())  # outlives the drain
    first.start()  # its own task: a tick stuck on the store is the drain's to cut short
    deadline = time.monotonic() + 30
    while len(calls) < 6:
        assert time.monotonic() < deadline, "the worker did not get to its sixth commit"
        await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await asyncio.wait_for(first.drain(2.0), 30) == 1
    assert time.monotonic() - started < 4.0 and not first.held
    assert (await store.sessions.get("a")).frames_processed == 5
    store.streams.commit = instant
    assert await store.streams.checkpoint("a") is None or (await store.streams.checkpoint("a"))[0] <= 5
    second = InferenceLoop(settings(), store, registry, Metrics())
    await run_until(second, lambda: _processed(store, "a", 10))
    assert await labels(store, "a") == await labels(reference, "a")
    for loop in (calm, first, second):
        await loop.stop()


async def _processed(store: Store, session_id: str, count: int) -> bool:
    return (await store.sessions.get(session_id)).frames_processed == count


async def test_a_second_worker_resumes_from_the_checkpoint_with_the_same_labels(registry):
    calm_store = memory_store()
    calm = InferenceLoop(settings(), calm_store, registry, Metrics())
    await add_session(calm_store, registry, "a", 11, seed=5)

    async def calm_done():
        return (await calm_store.sessions.get("a")).frames_processed == 11

    await run_until(calm, calm_done)

    store = memory_store()
    first = InferenceLoop(settings(lease_ttl_ms=300), store, registry, Metrics())
    await add_session(store, registry, "a", 11, seed=5)

    async def six_done():
        return (await store.sessions.get("a")).frames_processed >= 6

    await run_until(first, six_done)
    # `first` dies here without a word (no release): its lease runs out, a second worker resumes
    # from the checkpoint at seq 4 and replays seqs 5..6 without emitting them again.
    await asyncio.sleep(0.4)
    second = InferenceLoop(settings(lease_ttl_ms=300), store, registry, Metrics())

    async def all_done():
        return (await store.sessions.get("a")).frames_processed == 11

    await run_until(second, all_done)
    assert second.metrics.replayed_frames._value.get() >= 1
    results = await store.results.read_after("a", 0, limit=100)
    assert [r.seq for r in results] == list(range(1, 12))
    assert await labels(store, "a") == await labels(calm_store, "a")
    # The action events too: computed once, the same across the takeover (their wall-clock `at` aside).
    calm_events = [{k: v for k, v in e.items() if k != "at"} for e in await calm_store.results.events("a")]
    events = [{k: v for k, v in e.items() if k != "at"} for e in await store.results.events("a")]
    assert calm_events and events == calm_events
    await first.stop()
    await second.stop()
    await calm.stop()


async def test_the_onnxruntime_backend_gives_the_labels_of_torch(registry):
    """MOVINET_BACKEND=onnxruntime: the model exported at load, the same labels seq by seq."""
    pytest.importorskip("onnxruntime")
    onnx = ModelRegistry("movinet_test_stream", None, allow_random_weights=True, device="cpu",
                         backend="onnxruntime")
    runs = {}
    for name, models in (("torch", registry), ("onnxruntime", onnx)):
        store = memory_store()
        loop = InferenceLoop(settings(), store, models, Metrics())
        await add_session(store, models, "a", 9, seed=8)
        await add_session(store, models, "b", 5, seed=9)

        async def done(store=store):
            return [(await store.sessions.get(s)).frames_processed for s in "ab"] == [9, 5]

        await run_until(loop, done)
        runs[name] = [await labels(store, s) for s in "ab"]
        await loop.stop()
    for torch_session, onnx_session in zip(runs["torch"], runs["onnxruntime"], strict=True):
        assert [[i for i, _ in frame] for frame in torch_session] == [[i for i, _ in frame] for frame in onnx_session]
        scores = [(a, b) for t, o in zip(torch_session, onnx_session, strict=True)
                  for (_, a), (_, b) in zip(t, o, strict=True)]
        assert max(abs(a - b) for a, b in scores) <= 2e-4
