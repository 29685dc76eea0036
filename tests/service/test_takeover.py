"""Taking over a dead worker's sessions, on the in-memory store: a worker that claims many sessions
at once keeps every lease while it adopts them one by one (each a replay), so no other worker
snatches the last ones and no session bounces between workers."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.metrics import Metrics
from service.options import SessionOptions, WindowOptions
from service.registry import ModelRegistry
from service.settings import Settings
from service.store import Frame, SessionRecord, Store
from service.store.memory import memory_store
from service.worker.loop import InferenceLoop
from tests.service.conftest import TEST_MODEL, TEST_WEIGHTS

pytestmark = pytest.mark.anyio

SESSIONS, FRAMES = 8, 20


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def registry():
    return ModelRegistry(TEST_MODEL, None, allow_random_weights=True, device="cpu")


def settings(**overrides) -> Settings:
    # The shortest lease there is, and no checkpoint before the crash: every adoption replays all
    # FRAMES, so adopting them all takes longer than one lease lives.
    return Settings(model=TEST_MODEL, allow_random_weights=True, checkpoint_every=1000, release_idle_s=60,
                    lease_ttl_ms=200, **overrides)


async def add_session(store: Store, registry: ModelRegistry, session_id: str, seed: int) -> None:
    loaded = await registry.load(TEST_MODEL, TEST_WEIGHTS)
    now = time.time()
    await store.sessions.create(SessionRecord(session_id=session_id, token_hash="h", model=loaded.name,
                                              weights=loaded.weights, options=SessionOptions(
                                                  top_k=3, window=WindowOptions(frames=6)),
                                              created_at=now, idle_timeout_s=60, last_active_at=now))
    rng = np.random.default_rng(seed)
    size = loaded.input_size
    for i in range(FRAMES):
        data = rng.integers(0, 255, (size, size, 3), dtype=np.uint8).tobytes()
        await store.streams.append(session_id, Frame(pts=i / 5, frame_index=i, received_at=time.time(),
                                                     height=size, width=size, data=data), keep=1000)


async def processed(store: Store, ids: list[str]) -> list[int]:
    return [(await store.sessions.get(s)).frames_processed for s in ids]


async def test_a_worker_adopting_many_sessions_keeps_every_lease_it_claimed(registry):
    store = memory_store()
    ids = [f"s{i}" for i in range(SESSIONS)]
    for i, session_id in enumerate(ids):
        await add_session(store, registry, session_id, seed=i)
    dead = InferenceLoop(settings(), store, registry, Metrics())
    deadline = time.monotonic() + 300
    while await processed(store, ids) != [FRAMES] * SESSIONS:
        assert time.monotonic() < deadline
        await dead.tick()
    # `dead` dies here without a word: no release, no checkpoint; its leases run out.
    await asyncio.sleep(0.3)
    size = (await registry.load(TEST_MODEL, TEST_WEIGHTS)).input_size
    for session_id in ids:  # one more frame each: the sessions go on after the crash
        await store.streams.append(session_id, Frame(pts=FRAMES / 5, frame_index=FRAMES, received_at=time.time(),
                                                     height=size, width=size, data=bytes(size * size * 3)),
                                   keep=1000)

    first, second = (InferenceLoop(settings(), store, registry, Metrics()) for _ in range(2))
    # `first` claims them all in one tick; `second` tries to claim while `first` adopts them.
    rival_stop = asyncio.Event()

    async def rival() -> None:
        while not first.held:  # from the first adoption on, the others' leases are up for grabs
            await asyncio.sleep(0.005)
        while not rival_stop.is_set():
            await second.tick()

    task = asyncio.create_task(rival())
    started = time.monotonic()
    await first.tick()
    adopting_s = time.monotonic() - started
    rival_stop.set()
    await task
    assert adopting_s > 0.2, "the adoptions were faster than one lease: this test shows nothing"
    assert sorted(first.held) == sorted(ids) and not second.held
    assert first.metrics.leases_lost.labels("stale")._value.get() == 0
    assert first.metrics.replayed_frames._value.get() == SESSIONS * FRAMES
    await first.stop()
    await second.stop()
