"""The inference loop: one batched forward per tick over every session that has a frame ready.

Each tick takes at most ONE frame per session (a session's frames are a time series: two of them
can never share a batch), groups the sessions by model and window, stacks their states, runs
one forward per group in the inference thread, splits the states back, and appends one result
per frame to the result log, where the WebSocket pumps pick them up. A forward that fails is
retried session by session, so that one bad session costs only itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.logs import kv
from service.metrics import Metrics
from service.registry import LoadedModel, ModelRegistry
from service.store import Frame, Result, Store

log = logging.getLogger("service.inference")


@dataclass
class SessionRuntime:
    """What the worker keeps in memory for a session it serves (state never leaves the worker
    in the embedded mode; the Redis mode checkpoints it)."""

    session_id: str
    model: LoadedModel
    window: int | None  # None = unbounded: the model pools over every frame since the start
    top_k: int
    min_score: float
    smoothing: float
    slot: Any = None  # model.streaming.WindowedStream.Slot when windowed
    state: dict[str, Any] | None = None  # when unbounded
    smoothed: np.ndarray | None = None
    frames_done: int = 0
    last_seq: int = 0

    @property
    def group(self) -> tuple[str, int | None]:
        return (self.model.key, self.window)


@dataclass
class _Item:
    runtime: SessionRuntime
    frame: Frame
    started_at: float = 0.0
    probs: np.ndarray | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class InferenceLoop:
    def __init__(self, store: Store, registry: ModelRegistry, metrics: Metrics, *, max_batch: int,
                 batch_wait_ms: float = 0.0, checkpoint_every: int = 0):
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.checkpoint_every = checkpoint_every
        self._runtimes: dict[str, SessionRuntime] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.ticks = 0
        self.last_tick_at = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inference-loop")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def forget(self, session_id: str) -> None:
        self._runtimes.pop(session_id, None)

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(kv("inference_tick_failed"))
                await asyncio.sleep(0.1)

    async def _tick(self) -> None:
        self.last_tick_at = time.monotonic()
        await self.store.frames.wait_ready(0.5)
        if self.batch_wait_s:
            await asyncio.sleep(self.batch_wait_s)
        session_ids = await self.store.frames.ready_sessions(self.max_batch)
        if not session_ids:
            return
        items: list[_Item] = []
        for session_id in session_ids:
            runtime = self._runtimes.get(session_id)
            if runtime is None:
                try:
                    runtime = await self._open(session_id)
                except Exception as exc:  # e.g. its model cannot load any more: this session only
                    log.error(kv("session_open_failed", session_id=session_id, error=repr(exc)))
                    runtime = None
            if runtime is None:
                await self.store.frames.delete(session_id)  # deleted, or cannot be served
                continue
            frame = await self.store.frames.take(session_id)
            if frame is not None:
                items.append(_Item(runtime, frame))
        self.metrics.frames_pending.set(sum([await self.store.frames.backlog(i.runtime.session_id) for i in items]))
        groups: dict[tuple[str, int | None], list[_Item]] = {}
        for item in items:
            groups.setdefault(item.runtime.group, []).append(item)
        for group in groups.values():
            await self._infer(group)
        self.ticks += 1

    async def _open(self, session_id: str) -> SessionRuntime | None:
        record = await self.store.sessions.get(session_id)
        if record is None:
            return None
        loaded = await self.registry.load(record.model, record.weights)
        options = record.options
        window = options["window"]
        runtime = SessionRuntime(
            session_id=session_id, model=loaded,
            window=None if window["policy"] == "unbounded" else int(window.get("frames") or loaded.clip_frames),
            top_k=int(options["top_k"]), min_score=float(options["min_score"]),
            smoothing=float(options["smoothing"]),
        )
        self._runtimes[session_id] = runtime
        return runtime

    async def _infer(self, items: list[_Item]) -> None:
        loaded = items[0].runtime.model
        now = time.time()
        for item in items:
            item.started_at = now
            self.metrics.queue_wait_seconds.observe(max(0.0, now - item.frame.received_at))
        self.metrics.queue_lag_seconds.set(max(now - i.frame.received_at for i in items))
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            await loop.run_in_executor(self._executor, _forward, items)
        except Exception as exc:
            self.metrics.inference_errors.inc()
            log.warning(kv("batch_failed", model=loaded.key, batch=len(items), error=repr(exc)))
            # Isolate the culprit: every session alone; one that fails again gets an error result.
            for item in items:
                try:
                    await loop.run_in_executor(self._executor, _forward, [item])
                except Exception as single_exc:
                    item.error = f"inference failed: {single_exc!r}"
                    item.runtime.slot = item.runtime.state = item.runtime.smoothed = None
                    log.error(kv("session_inference_failed", session_id=item.runtime.session_id,
                                 error=repr(single_exc)))
        elapsed = time.perf_counter() - started
        self.metrics.inference_seconds.labels(loaded.name).observe(elapsed)
        self.metrics.batch_size.labels(loaded.name).observe(len(items))
        for item in items:
            await self._emit(item)

    async def _emit(self, item: _Item) -> None:
        runtime, frame = item.runtime, item.frame
        session_id = runtime.session_id
        if self._runtimes.get(session_id) is not runtime:
            return  # deleted (or restarted) while the forward ran
        labels = [] if item.probs is None else _top_labels(item.probs, runtime.model.labels, runtime.top_k,
                                                            runtime.min_score)
        record = await self.store.sessions.get(session_id)
        if record is None:
            self.forget(session_id)
            return
        now = time.time()
        lag = max(0.0, now - frame.received_at)
        result = Result(seq=frame.seq, pts=frame.pts, frame_index=frame.frame_index, labels=labels,
                        lag_ms=lag * 1000.0, dropped=record.frames_dropped, produced_at=now, error=item.error)
        await self.store.results.append(session_id, result)
        await self.store.sessions.add_counters(session_id, frames_processed=1)
        runtime.frames_done += 1
        runtime.last_seq = frame.seq
        self.metrics.frames_processed.labels(runtime.model.name).inc()
        self.metrics.frame_latency_seconds.observe(lag)
        if self.checkpoint_every and runtime.frames_done % self.checkpoint_every == 0 and item.error is None:
            data = await asyncio.get_running_loop().run_in_executor(self._executor, _state_bytes, runtime)
            if data is not None:
                await self.store.checkpoints.save(session_id, frame.seq, data)
                await self.store.frames.trim(session_id, frame.seq)


# --- in the inference thread ------------------------------------------------------------------


def _forward(items: list[_Item]) -> None:
    """One batched step (T=1) for ``items`` of one group; fills ``item.probs``, updates states."""
    import torch

    import model as movinet

    runtime0 = items[0].runtime
    loaded = runtime0.model
    size = loaded.input_size
    pixels = np.stack([np.frombuffer(i.frame.data, np.uint8).reshape(i.frame.height, i.frame.width, 3)
                       for i in items])  # (N, H, W, 3)
    video = torch.from_numpy(pixels).permute(0, 3, 1, 2).unsqueeze(2).float().div_(255.0)  # (N, 3, 1, H, W)
    with torch.inference_mode():
        if runtime0.window is None:
            states = []
            for item in items:
                if item.runtime.state is None:
                    item.runtime.state = loaded.net.init_state(1, size, size)
                states.append(item.runtime.state)
            logits, state = loaded.net(video, movinet.stack_states(states))  # (N, classes)
            for item, new_state in zip(items, movinet.split_states(state), strict=True):
                item.runtime.state = new_state
        else:
            stream = loaded.windowed(runtime0.window)
            for item in items:
                if item.runtime.slot is None:
                    item.runtime.slot = _new_slot(stream)
            logits = stream.step([i.runtime.slot for i in items], video)  # (N, classes)
        probs = torch.softmax(logits.float(), dim=-1).numpy()
    if not np.isfinite(probs).all():
        raise FloatingPointError("non-finite scores")
    for item, row in zip(items, probs, strict=True):
        runtime = item.runtime
        if runtime.smoothing > 0 and runtime.smoothed is not None:
            row = runtime.smoothing * runtime.smoothed + (1.0 - runtime.smoothing) * row
        runtime.smoothed = row
        item.probs = row


def _new_slot(stream: Any) -> Any:
    return stream.new_slot()


def _state_bytes(runtime: SessionRuntime) -> bytes | None:
    import model as movinet

    if runtime.window is None:
        return movinet.state_to_bytes(runtime.state) if runtime.state is not None else None
    return runtime.slot.to_bytes() if runtime.slot is not None else None


def _top_labels(probs: np.ndarray, names: list[str], top_k: int, min_score: float) -> list[dict[str, Any]]:
    k = min(top_k, probs.shape[0])
    top = np.argpartition(-probs, k - 1)[:k]
    top = top[np.argsort(-probs[top], kind="stable")]
    return [{"id": int(i), "name": names[i] if i < len(names) else str(i), "score": round(float(probs[i]), 4)}
            for i in top if probs[i] >= min_score]
