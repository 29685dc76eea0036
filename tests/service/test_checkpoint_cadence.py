"""Checkpoints by time (MOVINET_CHECKPOINT_INTERVAL_S): the worker loop on the in-memory store."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.metrics import Metrics
from service.settings import Settings
from service.store import Frame
from service.store.memory import memory_store
from service.worker.loop import InferenceLoop
from tests.service.conftest import TEST_MODEL, TEST_WEIGHTS
from tests.service.test_worker_loop import add_session, registry, run_until  # noqa: F401 - fixture

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def settings(**overrides) -> Settings:
    return Settings(model="movinet_test_stream", allow_random_weights=True, release_idle_s=60,
                    **overrides)


async def append(store, registry, session_id: str, index: int) -> None:  # noqa: F811
    size = (await registry.load(TEST_MODEL, TEST_WEIGHTS)).input_size
    data = np.random.default_rng(index).integers(0, 255, (size, size, 3), dtype=np.uint8).tobytes()
    await store.streams.append(session_id, Frame(pts=index / 5, frame_index=index, received_at=time.time(),
                                                 height=size, width=size, data=data), keep=1000)


async def test_a_checkpoint_is_due_by_time_when_the_frame_count_is_far(registry):  # noqa: F811
    store = memory_store()
    loop = InferenceLoop(settings(checkpoint_every=1000, checkpoint_interval_s=0.3), store, registry, Metrics())
    await add_session(store, registry, "a", 3, seed=1)

    async def processed(n: int):
        return (await store.sessions.get("a")).frames_processed >= n

    await run_until(loop, lambda: processed(3))
    assert await store.streams.checkpoint("a") is None  # 3 frames, 0.3 s not yet passed: none
    assert len(await store.streams.frames_after("a", 0)) == 3
    await asyncio.sleep(0.35)
    await append(store, registry, "a", 3)
    await run_until(loop, lambda: processed(4))
    assert (await store.streams.checkpoint("a"))[0] == 4  # the interval passed: the next commit saves one
    assert await store.streams.frames_after("a", 0) == []  # and the log is trimmed up to it
    await append(store, registry, "a", 4)
    await run_until(loop, lambda: processed(5))
    assert (await store.streams.checkpoint("a"))[0] == 4  # not again until the interval passes again
    await loop.stop()


async def test_without_an_interval_only_the_frame_count_decides(registry):  # noqa: F811
    store = memory_store()
    loop = InferenceLoop(settings(checkpoint_every=1000), store, registry, Metrics())
    await add_session(store, registry, "a", 3, seed=1)
    await run_until(loop, lambda: _processed(store, 3))
    await asyncio.sleep(0.35)
    await append(store, registry, "a", 3)
    await run_until(loop, lambda: _processed(store, 4))
    assert await store.streams.checkpoint("a") is None
    await loop.stop()


async def _processed(store, n: int) -> bool:
    return (await store.sessions.get("a")).frames_processed >= n


async def test_a_checkpoint_is_due_once_the_log_since_the_last_holds_more_than_the_bytes(registry):  # noqa: F811
    size = (await registry.load(TEST_MODEL, TEST_WEIGHTS)).input_size
    frame_bytes = size * size * 3
    store = memory_store()
    loop = InferenceLoop(settings(checkpoint_every=1000, checkpoint_log_bytes=int(2.5 * frame_bytes)), store,
                         registry, Metrics())
    await add_session(store, registry, "a", 2, seed=1)
    await run_until(loop, lambda: _processed(store, 2))
    assert await store.streams.checkpoint("a") is None  # 2 frames logged: under the bound
    for index in (2, 3, 4):
        await append(store, registry, "a", index)
    await run_until(loop, lambda: _processed(store, 5))
    assert (await store.streams.checkpoint("a"))[0] == 3  # the third frame took the log past it
    assert [f.seq for f in await store.streams.frames_after("a", 0)] == [4, 5]  # trimmed up to it
    await loop.stop()
