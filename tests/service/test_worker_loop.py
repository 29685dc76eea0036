"""The worker loop on the in-memory store, without a server: claim, batch, commit, resume."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

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
