"""A worker's resume after a crash gives its live run's labels seq by seq, also when the worker
computes in bf16 (its checkpoints keep the bf16 state as bf16) and when the Redis frame log holds
lossy JPEG frames (live forward and replay decode the same logged bytes)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import safetensors.torch

from service.metrics import Metrics
from service.options import SessionOptions, WindowOptions
from service.registry import ModelRegistry
from service.settings import Settings
from service.store import Frame, SessionRecord, Store
from service.store.memory import memory_store
from service.store.redis import redis_store
from service.worker.loop import InferenceLoop
from tests.service.conftest import TEST_MODEL

pytestmark = pytest.mark.anyio

FRAMES = 14
SIX = WindowOptions(frames=6)  # the windowed policy over 6 frames


@pytest.fixture
def anyio_backend():
    return "asyncio"


def camera_frame(size: int, index: int) -> bytes:
    """A moving gradient with noise: a picture a codec shrinks, different in every frame."""
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([(x + 3 * index) * 3, y * 3, (x + y + index) * 2], axis=-1) % 256
    noise = np.random.default_rng(index).integers(-8, 9, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8).tobytes()


async def add_session(store: Store, registry: ModelRegistry, session_id: str,
                      window: WindowOptions = SIX) -> None:
    loaded = await registry.load(TEST_MODEL, None)
    now = time.time()
    await store.sessions.create(SessionRecord(session_id=session_id, token_hash="h", model=loaded.name,
                                              weights=loaded.weights, options=SessionOptions(
                                                  top_k=3, window=window),
                                              created_at=now, idle_timeout_s=60, last_active_at=now))
    size = loaded.input_size
    for i in range(FRAMES):
        await store.streams.append(session_id, Frame(pts=i / 5, frame_index=i, received_at=time.time(), height=size,
                                                     width=size, data=camera_frame(size, i)), keep=1000)


async def run_until(loop: InferenceLoop, store: Store, session_id: str, frames: int) -> None:
    deadline = time.monotonic() + 60
    while (await store.sessions.get(session_id)).frames_processed < frames:
        assert time.monotonic() < deadline, "the worker did not finish in time"
        await loop.tick()


async def labels(store: Store, session_id: str) -> list[list[tuple[int, float]]]:
    results = await store.results.read_after(session_id, 0, limit=1000)
    assert [r.seq for r in results] == list(range(1, FRAMES + 1))
    return [[(label["id"], label["score"]) for label in r.labels] for r in results]


async def calm_and_crashed(store: Store, registry: ModelRegistry,
                           window: WindowOptions = SIX) -> tuple[list, list, InferenceLoop]:
    """Labels of an uninterrupted run ("calm") and of one whose worker dies after 6 frames ("a"),
    its seventh frame's commit still under way (it runs beside the next forward, and ends as the
    worker dies): checkpoints every 4 frames, so the second worker restores seq 4 and replays
    5..6 or 5..7."""
    def settings() -> Settings:
        return Settings(model=TEST_MODEL, allow_random_weights=True, checkpoint_every=4, release_idle_s=60,
                        lease_ttl_ms=300)

    calm = InferenceLoop(settings(), store, registry, Metrics())
    await add_session(store, registry, "calm", window)
    await run_until(calm, store, "calm", FRAMES)
    await calm.stop()
    await add_session(store, registry, "a", window)
    first = InferenceLoop(settings(), store, registry, Metrics())
    await run_until(first, store, "a", 6)
    await asyncio.sleep(0.4)  # `first` dies without a word: its lease runs out
    second = InferenceLoop(settings(), store, registry, Metrics())
    await run_until(second, store, "a", FRAMES)
    assert second.metrics.replayed_frames._value.get() >= 1
    await first.stop()
    await second.stop()
    return await labels(store, "calm"), await labels(store, "a"), second


async def test_a_tumbling_session_resumes_with_the_answer_it_held():
    """Window 4: the checkpoint at seq 4 holds the answer of the first window, which frame 5 (the
    first of the next window, replayed after the crash) gives again."""
    registry = ModelRegistry(TEST_MODEL, None, allow_random_weights=True, device="cpu")
    store = memory_store()
    calm, resumed, _ = await calm_and_crashed(store, registry, WindowOptions(policy="tumbling", frames=4))
    assert resumed == calm
    assert calm[4] == calm[3] and calm[8] == calm[7]  # held through each first half window
    _, data = await store.streams.checkpoint("a")
    assert "held" in safetensors.torch.load(data)

    # A checkpoint whose held answer is not one finite score per class is refused before any row
    # is touched (the worker then starts the session afresh), not swapped into a batch's answers.
    import torch

    import model
    from model.state import state_and_metadata_from_bytes
    from service.worker.runner import Runner, SessionState

    loaded = await registry.load(TEST_MODEL, None)
    tensors, meta = state_and_metadata_from_bytes(data)
    runner = Runner()
    for bad in (tensors["held"][:-1], torch.full_like(tensors["held"], float("nan")), tensors["held"][0]):
        session = SessionState("b", loaded, window=4, top_k=3, min_score=0.0, smoothing=0.0, tumbling=True)
        with pytest.raises(ValueError, match="held answer"):
            runner.restore(session, model.state_to_bytes({**tensors, "held": bad}, metadata=meta))
    session = SessionState("c", loaded, window=4, top_k=3, min_score=0.0, smoothing=0.0, tumbling=True)
    runner.restore(session, data)
    assert torch.equal(session.stream.held, tensors["held"])


async def test_a_bf16_worker_resumes_bit_exact_from_its_bf16_checkpoint():
    registry = ModelRegistry(TEST_MODEL, None, allow_random_weights=True, device="cpu", precision="bf16")
    assert (await registry.load(TEST_MODEL, None)).describe()["precision"] == "bf16"
    store = memory_store()
    calm, resumed, _ = await calm_and_crashed(store, registry)
    assert resumed == calm
    _, data = await store.streams.checkpoint("a")
    dtypes = {str(t.dtype) for t in safetensors.torch.load(data).values()}
    assert "torch.bfloat16" in dtypes and "torch.float16" not in dtypes  # the stream buffers as computed


async def test_a_resume_over_jpeg_frames_gives_the_live_labels(redis_server):
    redis_server.flush()
    registry = ModelRegistry(TEST_MODEL, None, allow_random_weights=True, device="cpu")
    raw_store = memory_store()
    raw, _, _ = await calm_and_crashed(raw_store, registry)
    store = redis_store(redis_server.url, frame_codec="jpeg", frame_quality=70)
    calm, resumed, _ = await calm_and_crashed(store, registry)
    assert resumed == calm  # exactly once over a lossy log: the replay decodes what the live run decoded
    assert calm != raw  # and the codec did change the pixels the model saw (else this shows nothing)
    await store.close()


def test_half_checkpoints_keep_bf16_tensors_and_halve_float32_ones():
    import torch

    import model

    state = {"buffer": torch.randn(2, 3, dtype=torch.bfloat16), "sum": torch.randn(2, 3)}
    back = safetensors.torch.load(model.state_to_bytes(state, half=True))
    assert back["buffer"].dtype == torch.bfloat16 and torch.equal(back["buffer"], state["buffer"])
    assert back["sum"].dtype == torch.float16
