"""The worker: lease sessions that have frames, batch them, commit results exactly once.

The same loop runs in the embedded default (in-memory store, inside the server process) and in
``movinet-service worker`` processes that share nothing but Redis:

1. **Claim.** Every ``claim_interval`` it leases sessions with unprocessed frames and no live
   lease (:meth:`WorkQueue.claim`). A lease comes with the session's committed progress and its
   last checkpoint: the worker restores the state from the checkpoint and *replays* the logged
   frames up to the progress without emitting their results (they were committed before), so it
   continues exactly where the previous holder stopped.
2. **Batch.** Each tick reads at most ONE new frame per held session (a session's frames are a
   time series: two of them never share a batch), groups the sessions by model and window, and
   runs one forward per group in the inference thread. A forward that fails is retried session by
   session, so that one bad session costs only itself.
3. **Commit.** Per session, one atomic commit: the result, the progress, every
   ``checkpoint_every`` frames the state (and the frame log is trimmed up to it), and the lease's
   renewal. A commit with a stale fencing token is refused: the session was taken over, and this
   worker forgets it. Any other store error abandons every held session (its memory may be ahead
   of what is committed); their leases expire and they are resumed from their checkpoints.
4. **Release.** A session idle for ``release_idle_s``, and every session on drain (SIGTERM), is
   checkpointed and released.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service import checkpoint as checkpoints
from service.logs import kv
from service.metrics import Metrics
from service.registry import LoadedModel, ModelRegistry
from service.store import Frame, Lease, Result, StaleLease, Store

log = logging.getLogger("service.inference")


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class SessionRuntime:
    """What the worker keeps in memory for a session it holds a lease on."""

    session_id: str
    model: LoadedModel
    window: int | None  # None = unbounded: the model pools over every frame since the start
    top_k: int
    min_score: float
    smoothing: float
    lease: Lease | None = None
    slot: Any = None  # model.streaming.WindowedStream.Slot when windowed
    state: dict[str, Any] | None = None  # when unbounded
    smoothed: np.ndarray | None = None
    cursor: int = 0  # seq of the last frame fed to the model
    since_checkpoint: int = 0
    last_frame_at: float = field(default_factory=time.monotonic)

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
                 batch_wait_ms: float = 0.0, checkpoint_every: int = 25, worker_id: str | None = None,
                 max_sessions: int = 64, lease_ttl_ms: int = 2000, claim_interval_s: float = 0.05,
                 release_idle_s: float = 10.0, checkpoint_half: bool = False):
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.checkpoint_every = checkpoint_every
        self.worker_id = worker_id or default_worker_id()
        self.max_sessions = max_sessions
        self.lease_ttl_ms = lease_ttl_ms
        self.claim_interval_s = claim_interval_s
        self.release_idle_s = release_idle_s
        self.checkpoint_half = checkpoint_half
        self._runtimes: dict[str, SessionRuntime] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.draining = False
        self.store_ok = True
        self._next_claim = 0.0
        self._next_renew = 0.0
        self._next_gauges = 0.0
        self._backoff = 0.0
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

    async def drain(self, timeout: float) -> int:
        """Stop claiming, finish the tick in flight, checkpoint and release every lease.

        Returns the number of sessions released; gives up (leases then expire) after ``timeout``.
        """
        self.draining = True
        if self._task is not None:
            self._stopping = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), min(timeout / 2, 5.0))
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        released = 0
        try:
            async with asyncio.timeout(timeout):
                for runtime in list(self._runtimes.values()):
                    if await self._release(runtime, reason="drain"):
                        released += 1
        except TimeoutError:
            log.warning(kv("drain_timeout", held=len(self._runtimes)))
        return released

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def held(self) -> dict[str, SessionRuntime]:
        return self._runtimes

    def forget(self, session_id: str) -> None:
        self._runtimes.pop(session_id, None)
        self.metrics.sessions_held.set(len(self._runtimes))

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._tick()
                if not self.store_ok:
                    log.info(kv("store_reconnected", worker=self.worker_id))
                self.store_ok, self._backoff = True, 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._store_failed(exc)

    async def _store_failed(self, exc: Exception) -> None:
        """A tick failed (the store is away, most likely): abandon the held sessions, back off."""
        self.metrics.store_errors.labels("worker").inc()
        if self._runtimes:
            self.metrics.leases_lost.labels("store_error").inc(len(self._runtimes))
        self._runtimes.clear()
        self.metrics.sessions_held.set(0)
        self._backoff = min(max(0.1, self._backoff * 2), 5.0)
        level = logging.WARNING if self.store_ok else logging.DEBUG
        log.log(level, kv("worker_tick_failed", worker=self.worker_id, error=repr(exc), retry_in_s=self._backoff))
        self.store_ok = False
        await asyncio.sleep(self._backoff)

    async def _tick(self) -> None:
        self.last_tick_at = now = time.monotonic()
        work = self.store.work
        if not self.draining and now >= self._next_claim and len(self._runtimes) < self.max_sessions:
            self._next_claim = now + self.claim_interval_s
            for lease in await work.claim(self.worker_id, self.max_sessions - len(self._runtimes), self.lease_ttl_ms):
                await self._adopt(lease)
        if now >= self._next_gauges:  # the autoscaling signals, fresh even on a full worker
            self._next_gauges = now + 1.0
            self.metrics.unclaimed_sessions.set(await work.unclaimed())
        if now >= self._next_renew:
            self._next_renew = now + self.lease_ttl_ms / 4000.0
            await self._renew()
        if not self._runtimes:
            await work.wait_work(self.claim_interval_s)
            return
        cursors = {sid: (rt.lease, rt.cursor) for sid, rt in self._runtimes.items() if rt.lease is not None}
        frames = await work.take_next(cursors, timeout=self.claim_interval_s)
        if frames and self.batch_wait_s:
            await asyncio.sleep(self.batch_wait_s)
            missing = {sid: c for sid, c in cursors.items() if sid not in frames}
            if missing:
                frames.update(await work.take_next(missing, timeout=0))
        await self._release_idle(set(frames))
        if not frames:
            return
        items = [_Item(self._runtimes[sid], frame) for sid, frame in frames.items() if sid in self._runtimes]
        items = items[: self.max_batch]
        groups: dict[tuple[str, int | None], list[_Item]] = {}
        for item in items:
            groups.setdefault(item.runtime.group, []).append(item)
        for group in groups.values():
            await self._infer(group)
        await asyncio.gather(*(self._commit(item) for item in items))
        self.metrics.backlog_frames.set(sum([await self.store.frames.backlog(sid) for sid in self._runtimes]))
        self.ticks += 1

    async def _renew(self) -> None:
        runtimes = [rt for rt in self._runtimes.values() if rt.lease is not None]
        alive = await self.store.work.renew([rt.lease for rt in runtimes], self.lease_ttl_ms)
        for runtime, ok in zip(runtimes, alive, strict=True):
            if not ok:
                self._lost(runtime, "stale")

    def _lost(self, runtime: SessionRuntime, reason: str) -> None:
        if self._runtimes.get(runtime.session_id) is runtime:
            self.metrics.leases_lost.labels(reason).inc()
            log.info(kv("lease_lost", worker=self.worker_id, session_id=runtime.session_id, reason=reason))
            self.forget(runtime.session_id)

    async def _release_idle(self, fed: set[str]) -> None:
        now = time.monotonic()
        for runtime in list(self._runtimes.values()):
            if runtime.session_id in fed:
                runtime.last_frame_at = now
            elif now - runtime.last_frame_at > self.release_idle_s:
                await self._release(runtime, reason="idle")

    async def _release(self, runtime: SessionRuntime, reason: str) -> bool:
        if runtime.lease is None:
            self.forget(runtime.session_id)
            return False
        data = await self._checkpoint_bytes(runtime)
        try:
            await self.store.work.release(runtime.lease, (runtime.cursor, data) if data else None)
        except StaleLease:
            self._lost(runtime, "stale")
            return False
        self.forget(runtime.session_id)
        log.info(kv("lease_released", worker=self.worker_id, session_id=runtime.session_id, reason=reason,
                    seq=runtime.cursor))
        return True

    # --- taking a session over ------------------------------------------------------------------

    async def _adopt(self, lease: Lease) -> None:
        try:
            runtime = await self._open(lease.session_id)
        except Exception as exc:  # e.g. its model cannot load any more: this session only
            log.error(kv("session_open_failed", session_id=lease.session_id, error=repr(exc)))
            runtime = None
        if runtime is None:
            return  # deleted meanwhile (the lease expires by itself), or cannot be served
        runtime.lease = lease
        runtime.cursor = lease.checkpoint_seq
        loop = asyncio.get_running_loop()
        if lease.checkpoint:
            try:
                runtime.slot, runtime.state, runtime.smoothed = await loop.run_in_executor(
                    self._executor, checkpoints.decode, lease.checkpoint, runtime.model.device)
            except Exception as exc:
                log.error(kv("checkpoint_unreadable", session_id=lease.session_id, error=repr(exc)))
                runtime.slot = runtime.state = runtime.smoothed = None
                runtime.cursor = lease.processed_seq  # start afresh after what was already answered
        replay: list[Frame] = []
        if runtime.cursor < lease.processed_seq:
            replay = await self.store.work.frames_after(lease.session_id, runtime.cursor, lease.processed_seq,
                                                        count=100_000)
            if replay:
                await loop.run_in_executor(self._executor, _replay, runtime, replay)
                self.metrics.replayed_frames.inc(len(replay))
            runtime.cursor = lease.processed_seq
        self.metrics.claims.labels("resumed" if lease.checkpoint or lease.processed_seq else "new").inc()
        log.info(kv("lease_taken", worker=self.worker_id, session_id=lease.session_id, token=lease.token,
                    checkpoint_seq=lease.checkpoint_seq, processed_seq=lease.processed_seq, replayed=len(replay)))
        self._runtimes[lease.session_id] = runtime
        self.metrics.sessions_held.set(len(self._runtimes))

    async def _open(self, session_id: str) -> SessionRuntime | None:
        record = await self.store.sessions.get(session_id)
        if record is None:
            return None
        loaded = await self.registry.load(record.model, record.weights)
        options = record.options
        window = options["window"]
        return SessionRuntime(
            session_id=session_id, model=loaded,
            window=None if window["policy"] == "unbounded" else int(window.get("frames") or loaded.clip_frames),
            top_k=int(options["top_k"]), min_score=float(options["min_score"]),
            smoothing=float(options["smoothing"]),
        )

    # --- inference and commits ------------------------------------------------------------------

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

    async def _commit(self, item: _Item) -> None:
        runtime, frame = item.runtime, item.frame
        if self._runtimes.get(runtime.session_id) is not runtime or runtime.lease is None:
            return  # forgotten (deleted, lease lost) while the forward ran
        runtime.cursor = frame.seq
        runtime.since_checkpoint += 1
        labels = [] if item.probs is None else _top_labels(item.probs, runtime.model.labels, runtime.top_k,
                                                            runtime.min_score)
        now = time.time()
        lag = max(0.0, now - frame.received_at)
        result = Result(seq=frame.seq, pts=frame.pts, frame_index=frame.frame_index, labels=labels,
                        lag_ms=lag * 1000.0, dropped=0, produced_at=now, error=item.error)
        checkpoint = None
        if self.checkpoint_every and runtime.since_checkpoint >= self.checkpoint_every and item.error is None:
            data = await self._checkpoint_bytes(runtime)
            if data is not None:
                checkpoint = (frame.seq, data)
        try:
            await self.store.work.commit(runtime.lease, [result], checkpoint, self.lease_ttl_ms)
        except StaleLease:
            self._lost(runtime, "stale")
            return
        if checkpoint is not None:
            runtime.since_checkpoint = 0
            self.metrics.checkpoints.inc()
            self.metrics.checkpoint_bytes.observe(len(checkpoint[1]))
        self.metrics.frames_processed.labels(runtime.model.name).inc()
        self.metrics.frame_latency_seconds.observe(lag)

    async def _checkpoint_bytes(self, runtime: SessionRuntime) -> bytes | None:
        if runtime.slot is None and runtime.state is None:
            return None
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: checkpoints.encode(runtime.slot, runtime.state, runtime.smoothed,
                                                       half=self.checkpoint_half))


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
    video = torch.from_numpy(pixels).to(loaded.device or "cpu", non_blocking=True)
    video = video.permute(0, 3, 1, 2).unsqueeze(2).float().div_(255.0)  # (N, 3, 1, H, W)
    with torch.inference_mode():
        if runtime0.window is None:
            states = []
            for item in items:
                if item.runtime.state is None:
                    item.runtime.state = loaded.net.init_state(1, size, size)
                states.append(item.runtime.state)
            logits, state = loaded.step(video, movinet.stack_states(states))  # (N, classes)
            for item, new_state in zip(items, movinet.split_states(state), strict=True):
                item.runtime.state = new_state
        else:
            stream = loaded.windowed(runtime0.window)
            for item in items:
                if item.runtime.slot is None:
                    item.runtime.slot = _new_slot(stream)
            logits = stream.step([i.runtime.slot for i in items], video)  # (N, classes)
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
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


def _replay(runtime: SessionRuntime, frames: list[Frame]) -> None:
    """Feed logged frames to a resumed session, one at a time as they went the first time."""
    for frame in frames:
        _forward([_Item(runtime, frame)])


def _top_labels(probs: np.ndarray, names: list[str], top_k: int, min_score: float) -> list[dict[str, Any]]:
    k = min(top_k, probs.shape[0])
    top = np.argpartition(-probs, k - 1)[:k]
    top = top[np.argsort(-probs[top], kind="stable")]
    return [{"id": int(i), "name": names[i] if i < len(names) else str(i), "score": round(float(probs[i]), 4)}
            for i in top if probs[i] >= min_score]
