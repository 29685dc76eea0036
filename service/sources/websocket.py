"""The ``/stream`` socket as a source: binary messages into input streams of images or video.

A :class:`WebSocketInput` lives as long as one socket. The first bytes of an input stream (or
the session's ``input`` option) say what it is:

* **images** (one JPEG, PNG or WebP per message): each image is placed on the model's frame grid
  by its pts first (a ``{"type": "frame", "pts"}`` control message, else the arrival gap), so an
  image the resampling would skip is never decoded; the ones that fill a slot go on the stream's
  :class:`FramePipe` with their decode as work for the decode pool, at most ``max_backlog``
  waiting (the oldest goes first; under the ``block`` policy the socket waits for room instead);
* **video** (the chunks of one WebM/MP4/H.264 stream): a :class:`VideoStreamDecoder` thread
  decodes into a pipe that blocks the decoder when full, and the socket stops reading while the
  decoder is ``max_video_buffer_bytes`` behind, so the sender is slowed by TCP, not robbed.

``{"type": "start"}`` or a message of the other kind ends the open stream; the next continues the
session's frame grid (:class:`FrameSink`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import Executor

from service.errors import MediaError
from service.logs import kv
from service.metrics import Metrics
from service.registry import LoadedModel
from service.settings import Settings
from service.sources.budget import DecodeBudget
from service.sources.decode import VideoStreamDecoder, image_work, sniff, starts_container
from service.sources.frames import Resampler
from service.sources.ingest import FrameSink
from service.sources.pipe import FramePipe, Pending
from service.store import SessionRecord

log = logging.getLogger("service.sources.websocket")

VIDEO_PIPE_FRAMES = 32  # decoded model frames waiting for the event loop before the decoder waits
MAX_PTS_S = 10.0 * 365 * 24 * 3600  # ten years of stream: larger (or non-finite) timestamps are refused


def valid_pts(value: object) -> float | None:
    """A client's pts in seconds, or None when it is not a finite number of at most ``MAX_PTS_S``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        pts = float(value)
    except OverflowError:
        return None
    return pts if math.isfinite(pts) and abs(pts) <= MAX_PTS_S else None


class WebSocketInput:
    def __init__(self, record: SessionRecord, model: LoadedModel, settings: Settings, sink: FrameSink,
                 metrics: Metrics, pool: Executor | None, budget: DecodeBudget | None = None):
        self.session_id = record.session_id
        self.budget = budget
        self.model = model
        self.settings = settings
        self.sink = sink
        self.metrics = metrics
        self.pool = pool
        source = record.options.source
        self.input_kind: str = source.input
        self.stream_fps: float | None = source.frame_rate
        self.max_backlog = record.options.backpressure.max_backlog
        self.block = record.options.backpressure.blocks  # wait for room rather than drop
        self.mode: str | None = None  # "images" | "video" while an input stream is open
        self.next_pts: float | None = None  # from a {"type": "frame", "pts"} control message
        self._pipe: FramePipe | None = None
        self._resampler: Resampler | None = None
        self._last_pts: float | None = None
        self._last_arrival = 0.0
        self._video: VideoStreamDecoder | None = None

    # --- what the socket calls ------------------------------------------------------------------

    async def on_binary(self, data: bytes, arrived_at: float) -> None:
        failed = self._video is not None and self._video.failed
        # A second file sent after the first without a "start" between them: a new stream (its
        # bytes fed to the first file's demuxer were lost without a word).
        another_file = self.mode == "video" and not failed and starts_container(data)
        if self.mode is None or failed or another_file:
            kind = sniff(data)
            if failed and kind is None:
                return  # the rest of a stream that already failed (reported once)
            if self.input_kind != "auto":
                kind = "image" if self.input_kind == "images" else "video"
            if kind is None:
                await self._unsupported("not a JPEG, PNG or WebP image, nor the start of a WebM, MP4 or H.264 stream")
                return
            await self.end_stream()
            self._open("images" if kind == "image" else "video")
        if self.mode == "images":
            await self._image(data, arrived_at)
        else:
            await self._feed_video(data)

    def set_next_pts(self, pts: float) -> None:
        self.next_pts = pts

    async def start_stream(self, input_kind: str | None, frame_rate: float | None) -> None:
        """``{"type": "start"}``: finish the open stream; the next bytes open a new one."""
        await self.end_stream()
        if input_kind:
            self.input_kind = input_kind
        if frame_rate:
            self.stream_fps = frame_rate

    async def end_stream(self) -> None:
        """Flush the open stream: every frame it holds reaches the frame log."""
        if self._pipe is not None:
            if self._video is not None:
                self._video.end()
                await self._pipe.wait_ended()
                self._video.join(5)
            else:
                await self._pipe.wait_idle()
                self._pipe.close()
        self._reset()
        await self.sink.end_stream()

    async def close(self) -> None:
        """The socket is gone: stop decoding without waiting for it."""
        if self._pipe is not None:
            self._pipe.close()  # a decoder blocked on it returns; its thread drains and exits
        if self._video is not None:
            self._video.end()
        self._reset()
        await self.sink.end_stream()

    # --- internals ------------------------------------------------------------------------------

    def _reset(self) -> None:
        self.mode = None
        self._pipe = self._video = self._resampler = None

    def _open(self, mode: str) -> None:
        self.mode = mode
        model, settings = self.model, self.settings
        if mode == "images":
            self._pipe = FramePipe(self.sink, "image", capacity=self.max_backlog, pool=self.pool)
            self._resampler = Resampler(model.frame_rate)
            self._last_pts = None
        else:
            self._pipe = FramePipe(self.sink, "video", capacity=VIDEO_PIPE_FRAMES, overflow="block")
            self._video = VideoStreamDecoder(
                self._pipe, model.frame_rate, model.input_size, settings.max_frame_pixels,
                stream_fps=self.stream_fps, short_side=model.short_side, exact=settings.exact_preprocess,
                low_delay=not self.block, name=f"video-{self.session_id}", budget=self.budget)  # block: a recording
            self._video.start()
        log.info(kv("input_opened", session_id=self.session_id, mode=mode))

    async def _unsupported(self, message: str, frames: int = 0) -> None:
        await self.sink.bad_input(MediaError("unsupported_format", message), frames=frames)

    async def _image(self, data: bytes, arrived_at: float) -> None:
        if sniff(data) != "image":  # a frame of an images stream, lost: counted as dropped
            await self._unsupported("not a JPEG, PNG or WebP image", frames=1)
            return
        pts = self.next_pts
        self.next_pts = None
        now = time.monotonic()
        if pts is None:  # no client timestamp: the previous image's, moved on by the arrival gap
            pts = 0.0 if self._last_pts is None else self._last_pts + (now - self._last_arrival)
        self._last_pts, self._last_arrival = pts, now
        assert self._resampler is not None and self._pipe is not None
        slots = self._resampler.push(pts)
        if slots is None:
            await self.sink.bad_input(MediaError(
                "late_frame", f"pts {pts:g} is before the previous frame's pts {self._resampler.last_pts:g}"))
            return
        if not slots:
            return  # between two model frames: never decoded
        model = self.model
        work = image_work(data, self.settings.max_frame_pixels, model.input_size, model.short_side,
                          self.settings.exact_preprocess)
        pending = Pending(pts=pts, slots=slots, arrived_at=arrived_at, work=work)
        if self.block:  # the socket is not read meanwhile: TCP slows the sender
            await self._pipe.put_when_room(pending)
        else:
            self._pipe.put(pending)

    async def _feed_video(self, data: bytes) -> None:
        decoder = self._video
        if decoder is None:
            return
        # Backpressure to the socket: stop reading while the decoder is this far behind.
        while (decoder.buffered_bytes > self.settings.max_video_buffer_bytes and self._video is decoder
               and not decoder.failed):
            await asyncio.sleep(0.005)
        decoder.feed(data)
