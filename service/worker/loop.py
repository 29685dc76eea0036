"""The worker loop: lease sessions that have frames, batch them, commit results exactly once.

The same loop runs in the embedded default (in-memory store, inside the server process) and in
``movinet-service worker`` processes that share nothing but Redis:

1. **Claim.** Every ``claim_interval`` it leases sessions with unprocessed frames and no live
   lease (:meth:`WorkQueue.claim`). A lease comes with the session's committed progress and its
   last checkpoint: the worker restores the state from the checkpoint and *replays* the logged
   frames up to the progress without emitting their results (they were committed before), so it
   continues exactly where the previous holder stopped.
2. **Batch.** Each tick reads at most ONE new frame per held session, the first after the last
   one fed (a session's frames are a time series: two of them never share a batch), groups the
   sessions by model and window, and runs one forward per group in the inference thread
   (:class:`~service.worker.runner.Runner`, which with its state bank is the only part that runs
   torch). A forward that fails is retried session by session, so that one bad session costs
   only itself.
3. **Commit.** Per session, one atomic commit: the result, the progress, every
   ``checkpoint_every`` frames the state (and the frame log is trimmed up to it), and the lease's
   renewal; it answers the session's backlog, which is how the backlog gauge is kept. A commit
   with a stale fencing token is refused: the session was taken over, and this worker forgets it.
   Any other store error abandons every held session (its memory may be ahead of what is
   committed); their leases expire and they are resumed from their checkpoints.
   A tick's commits run beside the next tick's take and forward (the inference thread does not
   wait for the store), and are awaited before that tick's own: a session's commits stay in
   order, and a store error of one tick fails the next. A checkpoint is encoded right after its
   forward, before the next one moves the state on; the next tick takes each session's frames
   after the last one *fed*, not the last one committed.
4. **Release.** A session idle for ``release_idle_s``, and every session on drain (SIGTERM), is
   checkpointed and released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from service.logs import kv
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from service.store import Frame, Lease, Result, StaleLease, Store, WorkerLoad
from service.worker.events import EventDetector
from service.worker.held import Held, default_worker_id
from service.worker.runner import Runner, SessionState, Step
from service.worker.webhooks import WebhookSender

log = logging.getLogger("service.worker")

REPLAY_CHUNK = 8  # frames replayed between two renewals of the lease


class InferenceLoop:
    """One worker's loop (see the module docstring); its knobs are :class:`Settings` fields."""

    def __init__(self, settings: Settings, store: Store, registry: ModelRegistry, metrics: Metrics):
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self.max_batch = settings.max_batch
        self.batch_wait_s = settings.batch_wait_ms / 1000.0
        self.checkpoint_every = settings.checkpoint_every
        self.checkpoint_interval_s = settings.checkpoint_interval_s
        self.checkpoint_log_bytes = settings.checkpoint_log_bytes
        self.worker_id = settings.worker_id or default_worker_id()
        self.max_sessions = settings.worker_max_sessions
        self.lease_ttl_ms = settings.lease_ttl_ms
        self.claim_interval_s = settings.claim_interval_s
        self.release_idle_s = settings.release_idle_s
        self.runner = Runner(checkpoint_half=settings.checkpoint_half)
        self.webhooks = WebhookSender(metrics, settings.rtsp_allow_private_addresses)
        # Claims wait for this (the app: the default model is loaded): a worker that is still
        # loading must not hold leases it cannot serve (they would run out, and be taken again).
        self.can_claim: Callable[[], bool] = lambda: True
        self._held: dict[str, Held] = {}
        self._commits: asyncio.Task | None = None  # the last tick's commits, running beside this tick
        self._claimed: list[Lease] = []  # claimed in this tick, not adopted yet (renewed with the held ones)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.draining = False
        self.store_ok = True
        self._next_claim = 0.0
        self._next_renew = 0.0
        self._beating = False
        self._lag_s = 0.0  # smoothed wait of frames before their forward
        self._lag_at = time.monotonic()
        self._heart: asyncio.Task | None = None
        self._next_gauges = 0.0
        self._backoff = 0.0
        self.ticks = 0
        self.last_tick_at = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="inference-loop")
        self._heart = asyncio.create_task(self._heartbeat(), name="worker-heartbeat")

    async def _heartbeat(self) -> None:
        """Every eighth of a lease, apart from the ticks: a long forward must not look like a death."""
        while True:
            await asyncio.sleep(self.lease_ttl_ms / 8000.0)
            try:
                await self.store.streams.heartbeat(self.worker_id, self.lease_ttl_ms, self.load())
            except Exception:  # the store is away: the ticks fail and back off; beat again later
                pass

    async def stop(self) -> None:
        self._stopping = True
        if self._heart is not None:
            self._heart.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._end_commits(5.0)  # before the webhooks stop: a commit may still send events
        await self.webhooks.stop()
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
                # The task ends at once; a forward under way goes on in the inference thread, and
                # its sessions (fed ahead of committed) are released without their state.
                await asyncio.gather(self._task, return_exceptions=True)
        # The last tick's commits, so that each session is released with its state; those that do
        # not end in time are cancelled, and their sessions released without (the next owner replays).
        await self._end_commits(min(timeout / 2, 5.0))
        released = 0
        try:
            async with asyncio.timeout(timeout):
                for held in list(self._held.values()):
                    if await self._release(held, reason="drain"):
                        released += 1
        except TimeoutError:
            log.warning(kv("drain_timeout", held=len(self._held)))
        return released

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def held(self) -> dict[str, Held]:
        return self._held

    def _observe_lag(self, lag: float) -> None:
        """How long the worker kept a frame taken this tick waiting, at most: since it came, or, when
        it came before its stream's clock said (a client sending a recording faster than real time),
        since it was due. So one client flooding its own backlog does not make the worker look full,
        and real-time sessions it serves too slowly do, however short its ticks."""
        self._lag_s = 0.8 * self._lag_s + 0.2 * lag if time.monotonic() - self._lag_at < 5.0 else lag
        self._lag_at = time.monotonic()

    def load(self) -> WorkerLoad:
        """How loaded this worker is (admission control); the lag decays while nothing waits."""
        idle_s = time.monotonic() - self._lag_at
        lag = self._lag_s * 0.5 ** (idle_s / 2.0) if idle_s > 1.0 else self._lag_s
        return WorkerLoad(self.worker_id, len(self._held), self.max_sessions, round(lag, 3))

    def forget(self, session_id: str) -> None:
        held = self._held.pop(session_id, None)
        if held is not None:
            self._release_rows(held)
        self._gauges()

    def _release_rows(self, held: Held) -> None:
        """Free the session's rows in the inference thread, after any forward under way (a forward
        may still use them; the thread runs one thing at a time)."""
        try:
            self._executor.submit(self.runner.release, held.state)
        except RuntimeError:  # the executor is shut down: the worker is stopping
            pass

    def _gauges(self) -> None:
        self.metrics.sessions_held.set(len(self._held))
        self.metrics.backlog_frames.set(sum(h.backlog for h in self._held.values()))

    # --- the loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
                if not self.store_ok:
                    log.info(kv("store_reconnected", worker=self.worker_id))
                self.store_ok, self._backoff = True, 0.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._store_failed(exc)

    async def _store_failed(self, exc: Exception) -> None:
        """A tick failed (the store is away, most likely): abandon the held sessions, back off."""
        with contextlib.suppress(Exception):  # the last tick's commits end first (or have failed: this error)
            await self._flush_commits()
        self.metrics.store_errors.labels("worker").inc()
        if self._held:
            self.metrics.leases_lost.labels("store_error").inc(len(self._held))
        for held in self._held.values():
            self._release_rows(held)
        self._held.clear()
        self._claimed.clear()  # not renewed any more: they expire by themselves
        self._gauges()
        self._backoff = min(max(0.1, self._backoff * 2), 5.0)
        level = logging.WARNING if self.store_ok else logging.DEBUG
        log.log(level, kv("worker_tick_failed", worker=self.worker_id, error=repr(exc), retry_in_s=self._backoff))
        self.store_ok = False
        await asyncio.sleep(self._backoff)

    async def tick(self) -> None:
        """One round: claim, renew, take one frame per held session, infer, commit."""
        self.last_tick_at = now = time.monotonic()
        streams = self.store.streams
        if not self._beating:  # before the first claim: others must see this worker alive
            await streams.heartbeat(self.worker_id, self.lease_ttl_ms, self.load())
            self._beating = True
        if (not self.draining and now >= self._next_claim and len(self._held) < self.max_sessions
                and self.can_claim()):
            self._next_claim = now + self.claim_interval_s
            self._claimed = await streams.claim(self.worker_id, self.max_sessions - len(self._held), self.lease_ttl_ms)
            while self._claimed:
                await self._adopt(self._claimed.pop(0))
                await self._renew()  # adopting one session (a replay) must not cost the others their lease
        if now >= self._next_gauges:  # the autoscaling signal, fresh even on a full worker
            self._next_gauges = now + 1.0
            self.metrics.unclaimed_sessions.set(await streams.unclaimed())
        if now >= self._next_renew:
            self._next_renew = now + self.lease_ttl_ms / 4000.0
            await self._renew()
        if not self._held:
            await self._flush_commits()
            await streams.wait_work(self.claim_interval_s)
            return
        cursors = {sid: (held.lease, held.fed) for sid, held in self._held.items()}
        frames = await streams.take_next(cursors, timeout=self.claim_interval_s)
        if frames and self.batch_wait_s:
            await asyncio.sleep(self.batch_wait_s)
            missing = {sid: c for sid, c in cursors.items() if sid not in frames}
            if missing:
                frames.update(await streams.take_next(missing, timeout=0))
        if not frames:  # nothing to overlap with: the last commits end (or fail) in this tick
            await self._flush_commits()
        await self._release_idle(set(frames))
        if not frames:
            return
        # The frames that waited longest first: with more sessions than max_batch, every session is
        # served in turn (the rest keep their taken frame for the next tick), none starves.
        waiting = sorted(((self._held[sid], frame) for sid, frame in frames.items() if sid in self._held),
                         key=lambda item: item[1].received_at)
        now = time.time()
        if waiting:  # what the worker made them wait: since they came, or since they were due
            self._observe_lag(max(now - max(frame.received_at, held.due_at(frame.received_at, frame.pts))
                                  for held, frame in waiting))
        batch = waiting[: self.max_batch]
        groups: dict[tuple[str, int | None, bool], list[tuple[Held, Step]]] = {}
        for held, frame in batch:
            groups.setdefault(held.state.group, []).append((held, Step(held.state, frame)))
        for group in groups.values():
            # Not a session forgotten meanwhile (a commit of the last tick found its lease stale
            # while an earlier group's forward ran): its rows are on their way back to the bank.
            group[:] = [(held, step) for held, step in group if self._holds(step.session)]
            for held, step in group:  # before the forward: cut short (a drain), it is ahead
                held.fed = step.frame.seq
            if group:
                await self._infer([step for _, step in group])
        commits = await self._prepare([item for group in groups.values() for item in group])
        await self._flush_commits()  # the last tick's, before these: each session's in order
        self._commits = asyncio.create_task(self._commit_all(commits), name="worker-commits")
        self.ticks += 1

    def _holds(self, session: SessionState) -> bool:
        held = self._held.get(session.session_id)
        return held is not None and held.state is session

    async def _end_commits(self, timeout: float) -> None:
        """Wait at most ``timeout`` for the last tick's commits (stop, drain); then cancel them."""
        try:
            await asyncio.wait_for(self._flush_commits(), timeout)
        except Exception as exc:  # committed or not, the store decides what counts
            log.warning(kv("worker_commits_unfinished", worker=self.worker_id, error=repr(exc)))
        task, self._commits = self._commits, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _flush_commits(self) -> None:
        """Wait for the last tick's commits, and raise their store error (a stale lease is not
        one: that session is forgotten). A cancelled wait leaves them running."""
        task = self._commits
        if task is None:
            return
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._commits is task:
                self._commits = None

    async def _renew(self, adopting: Lease | None = None) -> bool:
        """Renew the held sessions' leases, those claimed but not adopted yet, and ``adopting``
        (the one being adopted; whether it is still ours is the answer): after a crash a worker
        claims the dead one's sessions at once and adopts them one by one (each a replay);
        unrenewed, the last ones' leases ran out before their turn, another worker claimed them,
        and so on — sessions bounced between workers for a minute while their frames were dropped.
        The held ones are renewed during each replay too: on a slow machine one replay outlived
        the leases of the sessions adopted before it."""
        held = list(self._held.values())
        first = [adopting] if adopting is not None else []
        alive = await self.store.streams.renew(first + [h.lease for h in held] + self._claimed, self.lease_ttl_ms)
        for one, ok in zip(held, alive[len(first):], strict=False):
            if not ok:
                self._lost(one, "stale")
        return bool(alive[0]) if first else True

    def _lost(self, held: Held, reason: str) -> None:
        if self._held.get(held.session_id) is held:
            self.metrics.leases_lost.labels(reason).inc()
            log.info(kv("lease_lost", worker=self.worker_id, session_id=held.session_id, reason=reason))
            self.forget(held.session_id)

    async def _release_idle(self, fed: set[str]) -> None:
        now = time.monotonic()
        for held in list(self._held.values()):
            if held.session_id in fed:
                held.last_frame_at = now
            elif now - held.last_frame_at > self.release_idle_s and held.fed == held.cursor:
                await self._release(held, reason="idle")  # (not while its last commit is under way)

    async def _release(self, held: Held, reason: str) -> bool:
        # A state ahead of what is committed (a tick cut short) is not saved: the next owner
        # resumes from the last checkpoint and replays, as after a crash.
        data = await self._in_thread(self.runner.encode, held.state) if held.fed == held.cursor else None
        try:
            await self.store.streams.release(held.lease, (held.cursor, data) if data else None)
        except StaleLease:
            self._lost(held, "stale")
            return False
        self.forget(held.session_id)
        log.info(kv("lease_released", worker=self.worker_id, session_id=held.session_id, reason=reason,
                    seq=held.cursor))
        return True

    async def _in_thread(self, fn, *args):  # noqa: ANN001, ANN202 - the inference thread's calls
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- taking a session over ------------------------------------------------------------------

    async def _adopt(self, lease: Lease) -> None:
        try:
            opened = await self._open(lease.session_id)
        except Exception as exc:  # e.g. its model cannot load any more: this session only
            log.error(kv("session_open_failed", session_id=lease.session_id, error=repr(exc)))
            opened = None
        if opened is None:
            return  # deleted meanwhile (the lease expires by itself), or cannot be served
        state, webhook_url = opened
        if not await self._renew(lease):
            log.info(kv("lease_lost", worker=self.worker_id, session_id=lease.session_id, reason="stale",
                        during="open"))
            return  # its model took longer to load than the lease lived
        held = Held(state=state, lease=lease, cursor=lease.checkpoint_seq, webhook_url=webhook_url)
        if lease.checkpoint:
            try:
                await self._in_thread(self.runner.restore, state, lease.checkpoint)
            except Exception as exc:
                log.error(kv("checkpoint_unreadable", session_id=lease.session_id, error=repr(exc)))
                await self._in_thread(self.runner.restart, state)
                held.cursor = lease.processed_seq  # start afresh after what was already answered
        replay: list[Frame] = []
        if held.cursor < lease.processed_seq:
            replay = await self.store.streams.frames_after(lease.session_id, held.cursor, lease.processed_seq,
                                                           count=100_000)
            # In chunks, renewing the lease between them: a long replay on a busy machine must
            # not outlive the lease it runs under (another worker would take over, and replay more).
            for start in range(0, len(replay), REPLAY_CHUNK):
                try:
                    await self._in_thread(self.runner.replay, state, replay[start : start + REPLAY_CHUNK])
                except Exception as exc:  # a frame that fails every time: this session starts afresh
                    log.error(kv("replay_failed", session_id=lease.session_id, error=repr(exc)))
                    await self._in_thread(self.runner.restart, state)
                    break
                if not await self._renew(lease):
                    self.runner.release(state)
                    self.metrics.leases_lost.labels("stale").inc()
                    log.info(kv("lease_lost", worker=self.worker_id, session_id=lease.session_id, reason="stale",
                                during="replay"))
                    return
            self.metrics.replayed_frames.inc(len(replay))
            held.cursor = lease.processed_seq
        held.fed = held.cursor
        # The frames the checkpoint does not cover count towards the next one, so that a session
        # taken over again and again replays at most checkpoint_every frames, not ever more.
        held.since_checkpoint = held.cursor - lease.checkpoint_seq
        held.log_bytes = sum(len(frame.data) for frame in replay)
        self.metrics.claims.labels("resumed" if lease.checkpoint or lease.processed_seq else "new").inc()
        log.info(kv("lease_taken", worker=self.worker_id, session_id=lease.session_id, token=lease.token,
                    checkpoint_seq=lease.checkpoint_seq, processed_seq=lease.processed_seq, replayed=len(replay)))
        self._held[lease.session_id] = held
        self._gauges()

    async def _open(self, session_id: str) -> tuple[SessionState, str | None] | None:
        """The session's model state and its webhook URL, or None when it is gone."""
        record = await self.store.sessions.get(session_id)
        if record is None:
            return None
        loaded = await self.registry.load(record.model, record.weights)
        options = record.options
        window = options.window.length
        return SessionState(session_id=session_id, model=loaded,
                            window=None if options.window.policy == "unbounded" else (window or loaded.clip_frames),
                            top_k=options.top_k, min_score=options.min_score, smoothing=options.smoothing,
                            events=EventDetector(options.events, loaded.labels) if options.events.enabled else None,
                            tumbling=options.window.policy == "tumbling"), record.extra.get("webhook_url")

    # --- inference and commits ------------------------------------------------------------------

    async def _infer(self, steps: list[Step]) -> None:
        loaded = steps[0].session.model
        now = time.time()
        for step in steps:
            self.metrics.queue_wait_seconds.observe(max(0.0, now - step.frame.received_at))
        self.metrics.queue_lag_seconds.set(max(now - s.frame.received_at for s in steps))
        started = time.perf_counter()
        try:
            await self._in_thread(self.runner.forward, steps)
        except Exception as exc:
            self.metrics.inference_errors.inc()
            log.warning(kv("batch_failed", model=loaded.key, batch=len(steps), error=repr(exc)))
            # Isolate the culprit: every session alone; one that fails again gets an error result.
            for step in steps:
                if not self._holds(step.session):
                    continue  # forgotten meanwhile (see tick)
                try:
                    await self._in_thread(self.runner.forward, [step])
                except Exception as single_exc:
                    step.error = "inference failed on this frame"
                    await self._in_thread(self.runner.restart, step.session)
                    log.error(kv("session_inference_failed", session_id=step.session.session_id,
                                 error=repr(single_exc)))
        elapsed = time.perf_counter() - started
        self.metrics.inference_seconds.labels(loaded.name).observe(elapsed)
        self.metrics.batch_size.labels(loaded.name).observe(len(steps))

    def _checkpoint_due(self, held: Held) -> bool:
        """Every ``checkpoint_every`` frames, or ``checkpoint_interval_s`` after the last one (a
        cadence by time: with a large frame count, a camera's checkpoint bytes per second no
        longer depend on its frame rate), or once the frames logged since the last one hold more
        than ``checkpoint_log_bytes`` (a bound on the session's frame log and a takeover's replay,
        whatever the frame size, codec and cadence)."""
        if self.checkpoint_every and held.since_checkpoint >= self.checkpoint_every:
            return True
        if self.checkpoint_log_bytes and held.log_bytes > self.checkpoint_log_bytes:
            return True
        return bool(self.checkpoint_interval_s and held.since_checkpoint
                    and time.monotonic() - held.checkpointed_at >= self.checkpoint_interval_s)

    async def _prepare(self, batch: list[tuple[Held, Step]]) -> list[tuple[Held, Step, tuple[int, bytes] | None]]:
        """Count each fed frame towards its session's next checkpoint, and encode the checkpoints
        that are due now, in one call to the inference thread: before the next forward moves the
        states on. What :meth:`_commit_all` then writes."""
        kept, due = [], []
        for held, step in batch:
            if self._held.get(held.session_id) is not held:
                continue  # forgotten (deleted, lease lost) while the forward ran
            held.since_checkpoint += 1
            held.log_bytes += len(step.frame.data)
            kept.append((held, step))
            if step.error is None and self._checkpoint_due(held):
                due.append(held)
        encoded = await self._in_thread(lambda: [self.runner.encode(held.state) for held in due]) if due else []
        checkpoints = {}
        for held, data in zip(due, encoded, strict=True):
            if data is not None:
                checkpoints[held.session_id] = data
                held.since_checkpoint = held.log_bytes = 0
                held.checkpointed_at = time.monotonic()
        return [(held, step, (step.frame.seq, checkpoints[held.session_id]) if held.session_id in checkpoints
                 else None) for held, step in kept]

    async def _commit_all(self, commits: list[tuple[Held, Step, tuple[int, bytes] | None]]) -> None:
        try:
            await asyncio.gather(*(self._commit(held, step, checkpoint) for held, step, checkpoint in commits))
        finally:
            self._gauges()

    async def _commit(self, held: Held, step: Step, checkpoint: tuple[int, bytes] | None) -> None:
        frame = step.frame
        if self._held.get(held.session_id) is not held:
            return  # forgotten (deleted, lease lost) since its forward
        now = time.time()
        lag = max(0.0, now - frame.received_at)
        result = Result(seq=frame.seq, pts=frame.pts, frame_index=frame.frame_index, labels=step.labels,
                        lag_ms=lag * 1000.0, dropped=0, produced_at=now, error=step.error, events=step.events)
        try:
            held.backlog = await self.store.streams.commit(held.lease, [result], checkpoint, self.lease_ttl_ms)
        except StaleLease:
            self._lost(held, "stale")
            return
        held.cursor = frame.seq
        if checkpoint is not None:
            self.metrics.checkpoints.inc()
            self.metrics.checkpoint_bytes.observe(len(checkpoint[1]))
        self.metrics.frames_processed.labels(held.state.model.name).inc()
        self.metrics.frame_latency_seconds.observe(lag)
        if step.events and held.webhook_url:  # committed: now they may leave the worker
            self.webhooks.send(held.session_id, held.webhook_url, step.events)
