"""One client's frames into its session: pick the input kind, decode off the loop, append to the log.

A :class:`StreamIngest` lives as long as one ``/stream`` socket. It turns binary messages into
model frames (still images through a shared thread pool, video chunks through a decoder thread
per stream), gives them their place on the session's frame grid, and appends them to the frame
log, where the store applies the backlog limit and drop policy. Bad input is reported through
``report(code, message)`` and the session goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

from service.errors import MediaError
from service.logs import kv
from service.media import ImageStream, Prepared, VideoStreamDecoder, sniff
from service.metrics import Metrics
from service.registry import LoadedModel
from service.settings import Settings
from service.store import STORE_ERRORS, Frame, SessionRecord, Store

log = logging.getLogger("service.ingest")

Report = Callable[[str, str], Awaitable[None]]


class StreamIngest:
    def __init__(self, record: SessionRecord, model: LoadedModel, settings: Settings, store: Store,
                 metrics: Metrics, image_pool: Executor | None, report: Report):
        self.session_id = record.session_id
        self._store_error_reported = 0.0
        self._lost_reported = False
        self.model = model
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.image_pool = image_pool
        self.report = report
        source = record.options["source"]
        self.input_kind: str = source.get("input", "auto")
        self.stream_fps: float | None = source.get("frame_rate")
        backpressure = record.options["backpressure"]
        self.max_backlog: int = backpressure["max_backlog"]
        self.drop_policy: str = backpressure["policy"]
        self.frame_index_base = record.next_frame_index  # this stream's slot 0 on the session grid
        self.max_slot = -1
        self.last_seq = 0  # seq of the last frame appended by this connection

        self.mode: str | None = None  # "images" | "video" while a stream is open
        self.failed = False  # the current video stream died: skip its remaining chunks
        self.next_pts: float | None = None  # from a {"type": "frame", "pts"} control message
        self._images: ImageStream | None = None
        self._image_queue: deque[tuple[bytes, float, list[int], float]] = deque()
        self._image_ready = asyncio.Event()
        self._image_idle = asyncio.Event()
        self._image_idle.set()
        self._image_task: asyncio.Task | None = None
        self._last_pts: float | None = None
        self._last_arrival = 0.0
        self._video: VideoStreamDecoder | None = None
        self._video_events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._video_task: asyncio.Task | None = None
        self._video_done: asyncio.Event | None = None
        self._video_buffered = 0

    # --- input ----------------------------------------------------------------------------------

    async def on_binary(self, data: bytes, arrived_at: float) -> None:
        if self.mode is None or self.failed:
            kind = sniff(data)
            if self.failed and kind is None:
                return  # the rest of a stream that already failed (reported once)
            if self.input_kind != "auto":
                kind = "image" if self.input_kind == "images" else "video"
            if kind is None:
                self.metrics.decode_errors.labels("unsupported_format").inc()
                await self.report("unsupported_format",
                                  "not a JPEG, PNG or WebP image, nor the start of a WebM, MP4 or H.264 stream")
                return
            await self.end_stream()
            self._start_stream("images" if kind == "image" else "video")
        if self.mode == "images":
            await self._queue_image(data, arrived_at)
        else:
            await self._feed_video(data)

    async def add_frame(self, prepared: Prepared, kind: str) -> None:
        """A model frame from a source that decodes and resamples by itself (RTSP, WebRTC).

        ``prepared.slot`` is on the grid of the current input stream; :meth:`end_stream` ends it
        (a reconnect), and the next stream continues the session's grid after it.
        """
        if self.mode is None:
            self.mode = kind
            log.info(kv("stream_started", session_id=self.session_id, mode=kind))
        await self._append(prepared, received_at=prepared.decoded_at, kind=kind)

    async def drop_frame(self, error: MediaError, frames: int = 1) -> None:
        """A source that decodes by itself could not use a frame: report it, count ``frames`` dropped."""
        await self._bad_input(error, frames)

    def set_next_pts(self, pts: float) -> None:
        self.next_pts = pts

    async def start_stream(self, input_kind: str | None, frame_rate: float | None) -> None:
        """``{"type": "start"}``: finish the current stream; the next bytes open a new one."""
        await self.end_stream()
        if input_kind:
            self.input_kind = input_kind
        if frame_rate:
            self.stream_fps = frame_rate

    def _start_stream(self, mode: str) -> None:
        self.mode = mode
        self.failed = False
        if mode == "images":
            self._images = ImageStream(self.model.frame_rate, self.model.input_size, self.settings.max_frame_pixels,
                                       short_side=self.model.short_side, exact=self.settings.exact_preprocess)
            self._last_pts = None
            self._image_task = asyncio.create_task(self._decode_images(), name=f"images-{self.session_id}")
        else:
            loop = asyncio.get_running_loop()
            events = self._video_events

            def emit(kind: str, payload: object) -> None:  # from the decoder thread
                loop.call_soon_threadsafe(events.put_nowait, (kind, payload))

            self._video = VideoStreamDecoder(
                self.model.frame_rate, self.model.input_size, self.settings.max_frame_pixels, emit,
                stream_fps=self.stream_fps, short_side=self.model.short_side, exact=self.settings.exact_preprocess, name=f"video-{self.session_id}")
            self._video_buffered = 0
            self._video_done = asyncio.Event()
            self._video.start()
            self._video_task = asyncio.create_task(self._collect_video(), name=f"video-{self.session_id}")
        log.info(kv("stream_started", session_id=self.session_id, mode=mode))

    async def end_stream(self) -> None:
        """Flush the open stream: every frame it holds reaches the frame log."""
        if self.mode == "images":
            await self._image_idle.wait()
            if self._image_task is not None:
                self._image_task.cancel()
                self._image_task = None
        elif self.mode == "video" and self._video is not None:
            self._video.end()
            assert self._video_done is not None
            await self._video_done.wait()
            self._video.join(5)
            self._video = None
        if self.mode is not None:
            log.info(kv("stream_ended", session_id=self.session_id, mode=self.mode, last_seq=self.last_seq))
            # The next stream continues the session's frame grid after this one.
            self.frame_index_base += self.max_slot + 1
            self.max_slot = -1
            await self.store.sessions.set_fields(self.session_id, next_frame_index=self.frame_index_base)
        self.mode = None

    async def close(self) -> None:
        """The socket is gone: stop decoding without waiting for it."""
        if self._image_task is not None:
            self._image_task.cancel()
        self._image_queue.clear()
        self._image_idle.set()
        if self._video is not None:
            self._video.end()  # the thread drains what is queued and exits
        if self._video_task is not None:
            self._video_task.cancel()
        if self.mode is not None:
            self.frame_index_base += self.max_slot + 1
            await self.store.sessions.set_fields(self.session_id, next_frame_index=self.frame_index_base)
        self.mode = None

    # --- still images ---------------------------------------------------------------------------

    async def _queue_image(self, data: bytes, arrived_at: float) -> None:
        if sniff(data) != "image":
            await self.report("unsupported_format", "not a JPEG, PNG or WebP image")
            self.metrics.decode_errors.labels("unsupported_format").inc()
            return
        pts = self.next_pts
        self.next_pts = None
        now = time.monotonic()
        if pts is None:  # no client timestamp: the previous image's, moved on by the arrival gap
            pts = 0.0 if self._last_pts is None else self._last_pts + (now - self._last_arrival)
        self._last_pts, self._last_arrival = pts, now
        assert self._images is not None
        try:
            slots = self._images.plan(pts)
        except MediaError as exc:
            await self._bad_input(exc)
            return
        if not slots:
            return  # between two model frames: never decoded
        if len(self._image_queue) >= self.max_backlog:
            # A sender faster than decoding: the oldest waiting image goes, with its model frames.
            _, _, lost, _ = self._image_queue.popleft()
            self.metrics.frames_dropped.labels("backpressure").inc(len(lost))
            await self.store.sessions.add_counters(self.session_id, frames_dropped=len(lost))
        self._image_queue.append((data, pts, slots, arrived_at))
        self._image_idle.clear()
        self._image_ready.set()

    async def _decode_images(self) -> None:
        try:
            await self._decode_images_forever()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(kv("image_stream_failed", session_id=self.session_id))
        finally:
            self._image_queue.clear()
            self._image_idle.set()  # never leave an `eos` waiting for a dead task

    async def _decode_images_forever(self) -> None:
        loop = asyncio.get_running_loop()
        images = self._images
        assert images is not None
        while True:
            if not self._image_queue:
                self._image_idle.set()
                self._image_ready.clear()
                await self._image_ready.wait()
                continue
            data, pts, slots, arrived_at = self._image_queue.popleft()
            started = time.perf_counter()
            try:
                prepared = await loop.run_in_executor(self.image_pool, images.process, data, pts, slots)
            except MediaError as exc:
                await self._bad_input(exc, frames=len(slots))
                continue
            except Exception as exc:  # a decoder bug must not kill the stream
                log.exception(kv("image_decode_crashed", session_id=self.session_id))
                await self._bad_input(MediaError("decode_error", f"cannot decode image: {exc!r}"), frames=len(slots))
                continue
            self.metrics.decode_seconds.observe(time.perf_counter() - started)
            for frame in prepared:
                await self._append(frame, received_at=arrived_at, kind="image")

    # --- video streams --------------------------------------------------------------------------

    async def _feed_video(self, data: bytes) -> None:
        decoder = self._video
        if decoder is None:
            return
        # Backpressure to the socket: stop reading while the decoder is this far behind.
        while self._video_buffered > self.settings.max_video_buffer_bytes and self._video is decoder:
            await asyncio.sleep(0.005)
            self._video_buffered = decoder.buffered_bytes
        decoder.feed(data)
        self._video_buffered = decoder.buffered_bytes

    async def _collect_video(self) -> None:
        done = self._video_done
        assert done is not None
        try:
            await self._collect_video_events(done)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(kv("video_stream_failed", session_id=self.session_id))
        finally:
            done.set()  # never leave an `eos` waiting for a dead task

    async def _collect_video_events(self, done: asyncio.Event) -> None:
        while True:
            kind, payload = await self._video_events.get()
            if kind == "frame":
                await self._append(payload, received_at=payload.decoded_at, kind="video")
            elif kind == "error":
                await self._bad_input(payload, frames=0)  # a corrupt packet: the decoder goes on
            elif kind == "fatal":
                self.failed = True
                await self._bad_input(payload, frames=0)
            elif kind == "end":
                done.set()
                return

    # --- output ---------------------------------------------------------------------------------

    async def _append(self, prepared: Prepared, received_at: float, kind: str) -> None:
        self.max_slot = max(self.max_slot, prepared.slot)
        frame = Frame(pts=prepared.pts, frame_index=self.frame_index_base + prepared.slot, received_at=received_at,
                      height=prepared.rgb.shape[0], width=prepared.rgb.shape[1], data=prepared.rgb.tobytes())
        try:
            appended = await self.store.frames.append(self.session_id, frame, max_backlog=self.max_backlog,
                                                      policy=self.drop_policy)
        except STORE_ERRORS as exc:
            # Redis is away: this frame is lost (counted here; the store cannot count it), the socket goes on.
            self.metrics.frames_dropped.labels("store").inc()
            if time.monotonic() - self._store_error_reported > 2.0:
                self._store_error_reported = time.monotonic()
                log.warning(kv("store_unavailable", session_id=self.session_id, error=repr(exc)))
                await self.report("store_unavailable", "the state store is unreachable: frames are dropped "
                                  "until it is back")
            return
        except KeyError:
            if not self._lost_reported:
                self._lost_reported = True
                await self.report("session_lost", "the session is gone from the store")
            return
        self.last_seq = appended.seq
        await self.store.sessions.add_counters(self.session_id, frames_received=1, frames_dropped=appended.dropped)
        self.metrics.frames_received.labels(kind).inc()
        if appended.dropped:
            self.metrics.frames_dropped.labels("backpressure").inc(appended.dropped)

    async def _bad_input(self, error: MediaError, frames: int = 1) -> None:
        """Report bad input; ``frames`` model frames are lost with it (counted as dropped)."""
        self.metrics.decode_errors.labels(error.code).inc()
        if frames:
            self.metrics.frames_dropped.labels(_DROP_REASON.get(error.code, "error")).inc(frames)
            await self.store.sessions.add_counters(self.session_id, frames_dropped=frames)
        log.info(kv("bad_input", session_id=self.session_id, code=error.code, message=error.message))
        await self.report(error.code, error.message)


_DROP_REASON = {"frame_too_large": "too_large", "late_frame": "late"}
