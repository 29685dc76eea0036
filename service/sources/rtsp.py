"""An RTSP camera as a session's source: :class:`RtspPuller`.

``POST /sessions`` with ``{"source": {"type": "rtsp", "url": ...}}`` makes the server pull the
camera (the URL policy is :mod:`service.sources.urls`). The puller owns one thread that opens
the stream with PyAV and runs the shared decode loop (:func:`service.sources.decode.model_frames`:
decode, grid by pts, fit) into a :class:`~service.sources.pipe.FramePipe` — the latest
``MAX_PENDING_FRAMES`` wait, the oldest goes when the event loop is behind — whose task appends
them to the session like every source's. A dropped or stalled camera is reopened with
exponential backoff; each (re)connection is a new input stream that continues the session's
frame grid. Connection states go through the same pipe, in order with the frames, to the
session's labels sockets (``{"type": "source", ...}``) and ``GET /sessions/{id}``.

:meth:`RtspPuller.start` and :meth:`RtspPuller.stop` are the whole lifecycle; the session
service makes the puller the session's one frame producer (a slot in the store that other
gateways respect), so with several gateways exactly one of them pulls a camera.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import av

from service import messages
from service.errors import MediaError, public_reason
from service.logs import kv
from service.metrics import Metrics
from service.options import SourceOptions
from service.registry import LoadedModel
from service.settings import Settings
from service.sources.budget import DecodeBudget, lower_priority
from service.sources.decode import model_frames
from service.sources.frames import Resampler, fit_frame
from service.sources.ingest import FrameSink
from service.sources.pipe import FramePipe, Pending
from service.sources.rtsp_guard import RtspRelay, tls_context
from service.sources.urls import PROTOCOL_WHITELIST, RtspUrl, SourceRefused, pin, redact

log = logging.getLogger("service.sources.rtsp")

MAX_PENDING_FRAMES = 64  # model frames decoded but not yet appended (the event loop is behind)


class RtspPuller:
    """Pulls one camera into one session until :meth:`stop`.

    ``state``: ``connecting`` → ``streaming`` → (``reconnecting`` → ``connecting`` → ...) and
    ``stopped`` at the end, or ``failed`` after ``max_reconnects``. Every change is sent to the
    session's labels sockets through ``broadcast`` and kept for :meth:`status`.
    """

    def __init__(self, sink: FrameSink, model: LoadedModel, target: RtspUrl, source: SourceOptions,
                 settings: Settings, metrics: Metrics, *,
                 broadcast: Callable[[dict[str, Any]], Awaitable[None]],
                 on_stopped: Callable[[RtspPuller], Awaitable[None]], budget: DecodeBudget | None = None):
        self.session_id = sink.session_id
        self.sink = sink
        self.model = model
        self.target = target
        self.metrics = metrics
        self.broadcast = broadcast
        self.on_stopped = on_stopped
        self.transport = source.transport
        self.open_timeout_s = source.open_timeout_s
        self.read_timeout_s = source.read_timeout_s
        self.reconnect_delay_s = source.reconnect_delay_s
        self.max_reconnect_delay_s = source.max_reconnect_delay_s
        self.max_reconnects = source.max_reconnects
        self.allow_private = settings.rtsp_allow_private_addresses
        self.exact = settings.exact_preprocess
        self.max_pixels = settings.max_frame_pixels
        self.budget = budget or DecodeBudget()  # default: no limits
        self.tls = tls_context(settings.rtsps_verify, settings.rtsps_ca_file) if self.target.scheme == "rtsps" else None

        self.state = "connecting"
        self.reconnects = 0
        self.last_error: str | None = None
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None
        self.retry_in_s: float | None = None
        self.frames_decoded = 0
        self._stop = threading.Event()
        self._opened = False  # the current connection got past the open
        self._thread: threading.Thread | None = None
        self._pipe: FramePipe | None = None

    # --- start / stop -----------------------------------------------------------------------------

    def start(self) -> None:
        self._pipe = FramePipe(self.sink, "rtsp", capacity=MAX_PENDING_FRAMES, on_event=self._on_event,
                               on_frame=self._on_frame)
        self._thread = threading.Thread(target=self._run, name=f"rtsp-{self.session_id}", daemon=True)
        self._thread.start()
        self.metrics.sources_active.labels("rtsp").inc()
        log.info(kv("rtsp_started", session_id=self.session_id, url=self.target.redacted, transport=self.transport))

    async def stop(self) -> None:
        """Stop pulling. The thread leaves within the read timeout; nothing waits for it."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._pipe is not None:
            self._pipe.close()
        await self.sink.end_stream()
        self.state = "stopped"
        self.metrics.sources_active.labels("rtsp").dec()
        await self.on_stopped(self)
        log.info(kv("rtsp_stopped", session_id=self.session_id, reconnects=self.reconnects,
                    frames_decoded=self.frames_decoded))

    async def close(self, code: int, reason: str = "", message: dict[str, Any] | None = None) -> None:
        """The hub's call when the session ends or the server stops."""
        await self.stop()

    @property
    def streaming(self) -> bool:
        return self.state == "streaming"

    def status(self) -> dict[str, Any]:
        return {"type": "rtsp", "url": self.target.redacted, "transport": self.transport, "state": self.state,
                "reconnects": self.reconnects, "last_error": self.last_error, "connected_at": self.connected_at,
                "last_frame_at": self.last_frame_at, "retry_in_s": self.retry_in_s}

    # --- on the event loop, in order with the frames ----------------------------------------------

    async def _on_frame(self, frame: Pending) -> None:
        self.last_frame_at = frame.arrived_at
        if self.state != "streaming":
            await self._set_state("streaming")

    async def _on_event(self, name: str, payload: Any) -> None:
        if name == "connecting":
            self.retry_in_s = None
            await self._set_state("connecting")
        elif name == "connected":
            self.connected_at = time.time()
        elif name == "disconnected":
            error, delay = payload
            await self.sink.end_stream()  # the next connection is a new input stream
            self.last_error = error
            self.metrics.source_reconnects.labels("rtsp").inc()
            if delay is None:
                await self._set_state("failed")
                log.warning(kv("rtsp_failed", session_id=self.session_id, error=error, reconnects=self.reconnects))
            else:
                self.reconnects += 1
                self.retry_in_s = round(delay, 2)
                log.info(kv("rtsp_reconnecting", session_id=self.session_id, error=error,
                            reconnects=self.reconnects, retry_in_s=self.retry_in_s))
                await self._set_state("reconnecting")

    async def _set_state(self, state: str) -> None:
        self.state = state
        fields: dict[str, Any] = {}
        if state in ("reconnecting", "failed"):
            fields["error"] = self.last_error
        if state == "reconnecting":
            fields["retry_in_s"] = self.retry_in_s
        await self.broadcast(messages.source("rtsp", state, self.reconnects, **fields))

    # --- in the puller thread -------------------------------------------------------------------

    def _run(self) -> None:
        lower_priority(self.budget.nice)
        failures = 0  # connections in a row that gave no frame
        while not self._stop.is_set():
            self._pipe.event("connecting")
            self._opened = streamed = busy = False
            try:
                streamed = self._pull_once()
                error = "the stream ended"
            except (SourceRefused, MediaError) as exc:  # MediaError: frame_too_large, decoder_busy
                error = f"{exc.code}: {exc.message}"
                busy = exc.code == "decoder_busy"  # the server's state, not the camera's: no failure counted
            except av.error.ExitError:  # PyAV's timeout (interrupt callback)
                error = (f"no data for {self.read_timeout_s:g} s" if self._opened
                         else f"the camera did not answer within {self.open_timeout_s:g} s")
            except av.error.FFmpegError as exc:
                error = redact(f"{type(exc).__name__}: {exc.strerror or exc}")
            except Exception as exc:  # never let the thread die silently
                error = redact(f"{type(exc).__name__}: {public_reason(exc)}")
                log.error(kv("rtsp_thread_error", session_id=self.session_id, error=error))
            if self._stop.is_set():
                return
            failures = 0 if streamed else failures + (not busy)
            if self.max_reconnects is not None and failures > self.max_reconnects:
                self._pipe.event("disconnected", (error, None))
                return
            delay = min(self.max_reconnect_delay_s, self.reconnect_delay_s * 2 ** max(0, failures - 1))
            delay *= random.uniform(0.8, 1.2)  # jitter: many cameras behind one failed switch
            self._pipe.event("disconnected", (error, delay))
            self._stop.wait(delay)

    def _pull_once(self) -> bool:
        """One connection: open, decode until the stream ends or stalls. True if it gave frames."""
        assert self._pipe is not None
        address = pin(self.target, self.allow_private)
        # FFmpeg talks to the camera through the relay: the checked address only, no redirect followed.
        with RtspRelay(self.target, address, self.open_timeout_s, self.tls) as relay:
            try:
                streamed = self._open(relay.url)
            except (av.error.FFmpegError, OSError):
                if relay.refused is None:
                    raise
                streamed = False
        if relay.refused is not None:  # what FFmpeg saw as a closed connection
            raise relay.refused
        return streamed

    def _open(self, url: str) -> bool:
        assert self._pipe is not None
        options = {
            # rtsps is TCP only (the relay holds the TLS connection; FFmpeg would force TCP too).
            "rtsp_transport": "tcp" if self.target.scheme == "rtsps" else self.transport,
            "protocol_whitelist": PROTOCOL_WHITELIST,
            "allowed_media_types": "video",
            "timeout": str(int(self.read_timeout_s * 1e6)),  # socket I/O (microseconds)
            "analyzeduration": "200000",  # opens in ~0.3 s instead of ~1.2 s
            "probesize": "32768",
            "max_delay": "500000",
        }
        with av.open(url, mode="r", format="rtsp", options=options,
                     timeout=(self.open_timeout_s, self.read_timeout_s)) as container:
            if not container.streams.video:
                raise SourceRefused("unsupported_codec", "the camera's stream has no video track")
            stream = container.streams.video[0]
            # Frame threading: cameras (and x264 zerolatency) send sliced frames; see the notes.
            stream.codec_context.thread_type = "AUTO"
            self._opened = True
            self._pipe.event("connected")
            return self._stream(container, stream)

    def _stream(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
        pipe = self._pipe
        streamed = False

        def timestamp(picture: av.VideoFrame, index: int) -> float | None:
            self.frames_decoded += 1
            if picture.pts is None or picture.time_base is None:
                return None  # before the stream's first timestamp (RTCP sync)
            return float(picture.pts * picture.time_base)

        def fit(picture: av.VideoFrame) -> Any:
            return fit_frame(picture, self.model.input_size, self.model.short_side, self.exact)

        def corrupt(error: Any) -> None:
            error.message = redact(error.message)
            pipe.error(error)

        with self.budget.stream(self._stop.is_set, f"rtsp-{self.session_id}") as share:
            for frame in model_frames(container, stream, Resampler(self.model.frame_rate), fit, self.max_pixels,
                                      corrupt, timestamp=timestamp, stopped=self._stop.is_set, budget=share):
                streamed = True
                if not pipe.put(frame):
                    break
        return streamed
