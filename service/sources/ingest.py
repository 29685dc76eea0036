"""The end of every source: model frames into the session's frame log, losses counted once.

A :class:`FrameSink` belongs to one producer of one session (a ``/stream`` socket, an RTSP
puller, a WebRTC peer). It places each frame on the session's frame grid (an input stream's
slot ``k`` is the session's frame ``base + k``; a new input stream continues after the last),
appends it to the store — which gives it its seq, applies the backlog limit and counts, in one
atomic step — and is the one place where frames lost before the store (backpressure in a
source, bad input, the store away) are counted and reported to the client.

Under the ``block`` backpressure policy the sink waits, before each append, while the session's
backlog is at ``max_backlog``: the append never drops, the pipe's task stops, and with it the
source (a video decoder blocks on its full pipe, the socket stops being read, TCP slows the
sender). The wait is counted (``movinet_ingest_wait_seconds_total``), never as drops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from service.errors import MediaError
from service.logs import kv
from service.metrics import Metrics
from service.sources.frames import Prepared
from service.store import STORE_ERRORS, Frame, SessionRecord, Store

log = logging.getLogger("service.sources.ingest")

Report = Callable[[str, str], Awaitable[None]]

TOUCH_EVERY_S = 1.0  # a producer keeps its session alive at most this often (a store write)
REPORT_EVERY_S = 2.0  # a repeated loss (store away, a fault) is told to the client at most this often
BLOCK_POLL_S = (0.002, 0.02)  # a blocked producer looks at the backlog this often: first, at most
_DROP_REASON = {"frame_too_large": "too_large", "late_frame": "late"}


class FrameSink:
    def __init__(self, record: SessionRecord, store: Store, metrics: Metrics, report: Report,
                 touch: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.session_id = record.session_id
        self.store = store
        self.metrics = metrics
        self.report = report
        self.keep = record.options.backpressure.keep
        self.block_at = record.options.backpressure.max_backlog if record.options.backpressure.blocks else None
        self.frame_index_base = record.next_frame_index  # the open input stream's slot 0 on the grid
        self.max_slot = -1
        self.last_seq = 0  # seq of the last frame this producer appended
        self.streaming = False  # an input stream is open
        self._touch = touch
        # Called once when the session turns out to be gone (the producer should stop): a task,
        # so that the producer may cancel what called it.
        self.on_lost: Callable[[], Awaitable[None]] | None = None
        self._touched_at = 0.0
        self._reported_at: dict[str, float] = {}  # error code -> when the client was last told
        self._lost_reported = False

    async def add(self, prepared: Prepared, kind: str) -> None:
        """One model frame of the open input stream (``prepared.slot`` on its grid)."""
        if not self.streaming:
            self.streaming = True
            log.info(kv("stream_started", session_id=self.session_id, mode=kind))
        self.max_slot = max(self.max_slot, prepared.slot)
        frame = Frame(pts=prepared.pts, frame_index=self.frame_index_base + prepared.slot,
                      received_at=prepared.decoded_at, height=prepared.rgb.shape[0], width=prepared.rgb.shape[1],
                      data=prepared.rgb.tobytes())
        if self.block_at is not None:
            await self._wait_for_room(self.block_at)
        try:
            appended = await self.store.streams.append(self.session_id, frame, keep=self.keep)
        except STORE_ERRORS as exc:
            # The store is away: this frame is lost (counted here; the store cannot count it).
            self.metrics.frames_dropped.labels("store").inc()
            if self._due("store_unavailable"):
                log.warning(kv("store_unavailable", session_id=self.session_id, error=repr(exc)))
                await self.report("store_unavailable", "the state store is unreachable: frames are dropped "
                                  "until it is back")
            return
        except KeyError:
            if not self._lost_reported:
                self._lost_reported = True
                await self.report("session_lost", "the session is gone from the store")
                if self.on_lost is not None:  # e.g. deleted through another gateway: the producer stops
                    asyncio.get_running_loop().create_task(self.on_lost())
            return
        except Exception:  # a fault of the server's own (logged): this frame is lost, the stream goes on
            self.metrics.frames_dropped.labels("error").inc()
            await self._count_dropped(1)
            if self._due("internal_error"):  # the traceback and the client's message, not one per frame
                log.exception(kv("append_failed", session_id=self.session_id))
                await self.report("internal_error", "the server could not log a frame (a fault of its own, "
                                  "logged there): it is dropped and the stream goes on")
            return
        self.last_seq = appended.seq
        self.metrics.frames_received.labels(kind).inc()
        if appended.dropped:
            self.metrics.frames_dropped.labels("backpressure").inc(appended.dropped)
        await self.touch()

    async def dropped(self, frames: int, reason: str = "backpressure") -> None:
        """``frames`` model frames a source could not keep (it fell behind)."""
        if frames:
            self.metrics.frames_dropped.labels(reason).inc(frames)
            await self._count_dropped(frames)

    async def bad_input(self, error: MediaError, frames: int = 1) -> None:
        """Report bad input; ``frames`` model frames are lost with it (counted as dropped)."""
        self.metrics.decode_errors.labels(error.code).inc()
        if frames:
            self.metrics.frames_dropped.labels(_DROP_REASON.get(error.code, "error")).inc(frames)
            await self._count_dropped(frames)
        log.info(kv("bad_input", session_id=self.session_id, code=error.code, message=error.message))
        await self.report(error.code, error.message)

    async def end_stream(self) -> None:
        """The open input stream is over; the next one continues the session's grid after it."""
        if not self.streaming:
            return
        self.streaming = False
        self.frame_index_base += self.max_slot + 1
        self.max_slot = -1
        log.info(kv("stream_ended", session_id=self.session_id, last_seq=self.last_seq))
        try:
            await self.store.sessions.set_fields(self.session_id, next_frame_index=self.frame_index_base)
        except STORE_ERRORS:
            pass  # the append script keeps next_frame_index too: the grid survives this

    async def touch(self, force: bool = False) -> None:
        """Keep the session alive (throttled to one store write a second)."""
        if self._touch is None:
            return
        now = time.monotonic()
        if force or now - self._touched_at > TOUCH_EVERY_S:
            self._touched_at = now
            try:
                await self._touch(self.session_id)
            except STORE_ERRORS:
                pass  # the store is away: its users are told elsewhere; the idle clock waits

    async def _wait_for_room(self, limit: int) -> None:
        """Until fewer than ``limit`` frames of the session wait for inference (``block``)."""
        started = None
        delay = BLOCK_POLL_S[0]
        while True:
            try:
                if await self.store.streams.backlog(self.session_id) < limit:
                    break
            except STORE_ERRORS:
                break  # the append finds the store away too, and counts the frame
            if started is None:
                started = time.monotonic()
            await asyncio.sleep(delay)
            delay = min(delay * 2, BLOCK_POLL_S[1])
            await self.touch()  # waiting is activity: the session must not expire meanwhile
        if started is not None:
            self.metrics.ingest_wait_seconds.inc(time.monotonic() - started)

    def _due(self, code: str, every_s: float = REPORT_EVERY_S) -> bool:
        """Whether the client should be told of ``code`` now: at most once every ``every_s`` (a
        store outage or a fault loses many frames; one message says so)."""
        now, last = time.monotonic(), self._reported_at.get(code)
        if last is not None and now - last < every_s:
            return False
        self._reported_at[code] = now
        return True

    async def _count_dropped(self, frames: int) -> None:
        try:
            await self.store.sessions.add_counters(self.session_id, frames_dropped=frames)
        except STORE_ERRORS:
            pass
