"""RTSP cameras as session sources: URL checks and :class:`RtspPuller`.

``POST /sessions`` with ``{"source": {"type": "rtsp", "url": ...}}`` makes the server pull the
camera. The puller owns one thread that opens the stream with PyAV, decodes, puts frames on the
model's frame grid by pts (the same :class:`service.media.Resampler` and ``fit_frame`` as the
WebSocket path) and hands the model frames to the event loop, where a :class:`StreamIngest`
appends them to the session exactly as it does for a socket's frames. A dropped or stalled
camera is reopened with exponential backoff; each (re)connection is a new input stream that
continues the session's frame grid.

Starting and stopping the pull is one call each (:meth:`RtspPuller.start`, :meth:`RtspPuller.stop`),
owned by the session service, which makes the puller the session's one frame producer (like a
``/stream`` socket: ``attach_producer``, a slot in the store that other gateways respect), so
that with several gateways an ingest lease can wrap exactly these two calls.

Security: only ``rtsp://`` and ``rtsps://``; FFmpeg gets a protocol whitelist (no ``file:``, no
HTTP, no other protocol reachable through the URL or a redirect) and the forced ``rtsp`` demuxer;
the host is resolved here and, unless ``MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES`` is set, every
address must be a public one; ``rtsp://`` connects to the address that was checked (no second
lookup that DNS rebinding could answer differently). Credentials in URLs are never logged nor
returned: :func:`redact` hides them in everything that leaves this module.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import av

from service.errors import ApiError
from service.logs import kv
from service.media import Prepared, Resampler, check_pixels, fit_frame

if TYPE_CHECKING:
    from service.ingest import StreamIngest
    from service.registry import LoadedModel
    from service.sessions import SessionService
    from service.store import SessionRecord

log = logging.getLogger("service.rtsp")

SCHEMES = {"rtsp": 554, "rtsps": 322}
# What FFmpeg may open for an RTSP URL: the control connection (tcp, tls for rtsps) and the
# media (rtp/srtp over udp, or interleaved in the tcp connection). Nothing else: no file, no http.
PROTOCOL_WHITELIST = "rtsp,rtsps,rtp,srtp,udp,tcp,tls"
MAX_PENDING_FRAMES = 64  # model frames decoded but not yet appended (the event loop is behind)
TOUCH_EVERY_S = 1.0

_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}$")
_USERINFO = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:%]*$")
_URL_CREDENTIALS = re.compile(r"(?i)\b(rtsps?://)[^\s/?#@]*@")
_SECRET_KEYS = re.compile(r"(?i)user|pass|pwd|token|key|auth|secret|sig|cred")


class SourceRefused(Exception):
    """A URL the server will not open; ``code`` is the API error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def to_api_error(self) -> ApiError:
        return ApiError(422, self.code, self.message)


def redact(text: str) -> str:
    """``text`` without credentials: ``rtsp://user:pass@host`` → ``rtsp://***@host``, secret-looking
    query values → ``***``. Applied to every URL and error message that leaves this module."""
    text = _URL_CREDENTIALS.sub(r"\1***@", text)

    def hide_query(match: re.Match) -> str:
        pairs = parse_qsl(match.group(2), keep_blank_values=True)
        return match.group(1) + urlencode([(k, "***" if _SECRET_KEYS.search(k) else v) for k, v in pairs],
                                          safe="*/:,")

    return re.sub(r"(rtsps?://[^\s?#]*\?)([^\s#']*)", hide_query, text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class RtspUrl:
    """A syntactically checked RTSP URL, split. ``url`` is secret (it may hold credentials)."""

    url: str
    scheme: str
    userinfo: str  # "" or "user:password" (percent-encoded as given)
    host: str  # hostname or IP literal, without brackets
    port: int
    path_query: str  # path + "?" + query, as given

    @property
    def redacted(self) -> str:
        return redact(self.url)

    def with_host(self, host: str) -> str:
        """The URL FFmpeg opens, its host replaced by ``host`` (a checked address)."""
        literal = f"[{host}]" if ":" in host else host
        auth = f"{self.userinfo}@" if self.userinfo else ""
        return f"{self.scheme}://{auth}{literal}:{self.port}{self.path_query}"


def parse_url(url: str) -> RtspUrl:
    """Syntax only (no DNS): rtsp:// or rtsps://, a plain host name or IP, a port, no odd characters."""
    if len(url) > 2048 or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise SourceRefused("url_not_allowed", "the URL is too long or contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceRefused("url_not_allowed", f"not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise SourceRefused("url_not_allowed", "only rtsp:// and rtsps:// URLs are accepted"
                            + (f", not {scheme}:" if scheme else ""))
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host = parts.hostname or ""
    if not at:
        userinfo = ""
    if not host:
        raise SourceRefused("url_not_allowed", "the URL has no host")
    if "\\" in url or not _USERINFO.match(userinfo):
        raise SourceRefused("url_not_allowed", "the URL's user information has characters that are not allowed")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.match(host):
            raise SourceRefused("url_not_allowed", "the host must be a DNS name or an IP address") from None
    path_query = parts.path or "/"
    if parts.query:
        path_query += "?" + parts.query
    return RtspUrl(url=url, scheme=scheme, userinfo=userinfo, host=host, port=port or SCHEMES[scheme],
                   path_query=path_query)


def address_allowed(address: str) -> bool:
    """Public unicast addresses only: no private, loopback, link-local, shared, reserved or multicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def resolve(target: RtspUrl, allow_private: bool) -> str:
    """The URL FFmpeg is to open, after resolving and checking the host. Blocking (DNS)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SourceRefused("host_not_found", f"cannot resolve the camera's host: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise SourceRefused("host_not_found", "the camera's host has no address")
    if not allow_private:
        refused = [a for a in addresses if not address_allowed(a)]
        if refused:
            raise SourceRefused(
                "address_not_allowed",
                f"the camera's address {refused[0]} is private, loopback, link-local or reserved; "
                "the server only opens public addresses (setting MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES)")
    # rtsp:// opens the address just checked; rtsps:// keeps the name for TLS (SNI, certificates).
    return target.with_host(addresses[0]) if target.scheme == "rtsp" else target.url


async def check_source(source: dict[str, Any], allow_private: bool) -> RtspUrl:
    """At session creation: the URL's syntax, then its addresses; refusals are 422 API errors."""
    try:
        target = parse_url(source["url"])
        await asyncio.get_running_loop().run_in_executor(None, resolve, target, allow_private)
    except SourceRefused as exc:
        raise exc.to_api_error() from None
    return target


# --- the puller -------------------------------------------------------------------------------


class RtspPuller:
    """Pulls one camera into one session until :meth:`stop`.

    ``state``: ``connecting`` → ``streaming`` → (``reconnecting`` → ``connecting`` → ...) and
    ``stopped`` at the end, or ``failed`` after ``max_reconnects``. Every change is reported to
    the session's labels sockets as ``{"type": "source", ...}`` and kept for ``GET /sessions/{id}``.
    """

    def __init__(self, service: SessionService, record: SessionRecord, model: LoadedModel, ingest: StreamIngest,
                 target: RtspUrl):
        self.service = service
        self.session_id = record.session_id
        self.model = model
        self.ingest = ingest
        self.target = target
        source = record.options["source"]
        self.transport: str = source["transport"]
        self.open_timeout_s: float = source["open_timeout_s"]
        self.read_timeout_s: float = source["read_timeout_s"]
        self.reconnect_delay_s: float = source["reconnect_delay_s"]
        self.max_reconnect_delay_s: float = source["max_reconnect_delay_s"]
        self.max_reconnects: int | None = source["max_reconnects"]
        self.allow_private = service.settings.rtsp_allow_private_addresses
        self.exact = service.settings.exact_preprocess
        self.max_pixels = service.settings.max_frame_pixels

        self.state = "connecting"
        self.reconnects = 0
        self.last_error: str | None = None
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None
        self.retry_in_s: float | None = None
        self.frames_decoded = 0
        self._stop = threading.Event()
        self._opened = False  # the current connection got past the open
        self._posted = 0  # model frames posted by the thread (written by the thread only)
        self._appended = 0  # ... and taken by the event loop (written by the loop only)
        self._thread: threading.Thread | None = None
        self._events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._consumer: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- start / stop (what an ingest lease would wrap) -----------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._consumer = asyncio.create_task(self._consume(), name=f"rtsp-{self.session_id}")
        self._thread = threading.Thread(target=self._run, name=f"rtsp-{self.session_id}", daemon=True)
        self._thread.start()
        self.service.metrics.sources_active.labels("rtsp").inc()
        log.info(kv("rtsp_started", session_id=self.session_id, url=self.target.redacted, transport=self.transport))

    async def stop(self) -> None:
        """Stop pulling. The thread leaves within the read timeout; nothing waits for it."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._consumer is not None:
            self._consumer.cancel()
            try:
                await self._consumer
            except (asyncio.CancelledError, Exception):
                pass
        await self.ingest.close()
        self.state = "stopped"
        self.service.metrics.sources_active.labels("rtsp").dec()
        await self.service.detach_producer(self.session_id, self)
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

    # --- on the event loop ------------------------------------------------------------------------

    def _post(self, kind: str, payload: Any = None) -> None:  # from the thread
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, (kind, payload))
        except RuntimeError:  # the loop is closed: the server is gone
            self._stop.set()

    async def _consume(self) -> None:
        last_touch = 0.0
        while True:
            kind, payload = await self._events.get()
            try:
                if kind == "frame":
                    self._appended += 1
                    await self.ingest.add_frame(payload, kind="rtsp")
                    self.last_frame_at = payload.decoded_at
                    if self.state != "streaming":
                        await self._set_state("streaming")
                    if time.monotonic() - last_touch > TOUCH_EVERY_S:
                        last_touch = time.monotonic()
                        await self.service.touch(self.session_id)
                elif kind == "connecting":
                    self.retry_in_s = None
                    await self._set_state("connecting")
                elif kind == "connected":
                    self.connected_at = time.time()
                elif kind == "disconnected":
                    error, delay = payload
                    await self.ingest.end_stream()  # the next connection is a new input stream
                    self.last_error = error
                    self.service.metrics.source_reconnects.labels("rtsp").inc()
                    if delay is None:
                        await self._set_state("failed")
                        log.warning(kv("rtsp_failed", session_id=self.session_id, error=error,
                                       reconnects=self.reconnects))
                    else:
                        self.reconnects += 1
                        self.retry_in_s = round(delay, 2)
                        log.info(kv("rtsp_reconnecting", session_id=self.session_id, error=error,
                                    reconnects=self.reconnects, retry_in_s=self.retry_in_s))
                        await self._set_state("reconnecting")
                elif kind == "dropped":
                    self.service.metrics.frames_dropped.labels("backpressure").inc(payload)
                    await self.service.store.sessions.add_counters(self.session_id, frames_dropped=payload)
                elif kind == "error":
                    self.service.metrics.decode_errors.labels(payload[0]).inc()
                    await self.service.hub.broadcast(self.session_id, {"type": "error", "code": payload[0],
                                                                       "message": payload[1]})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(kv("rtsp_event_failed", session_id=self.session_id, kind=kind))

    async def _set_state(self, state: str) -> None:
        self.state = state
        message = {"type": "source", "source": "rtsp", "state": state, "reconnects": self.reconnects}
        if state in ("reconnecting", "failed"):
            message["error"] = self.last_error
        if state == "reconnecting":
            message["retry_in_s"] = self.retry_in_s
        await self.service.hub.broadcast(self.session_id, message)

    # --- in the puller thread -------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0  # connections in a row that gave no frame
        while not self._stop.is_set():
            self._post("connecting")
            self._opened = streamed = False
            try:
                streamed = self._pull_once()
                error = "the stream ended"
            except SourceRefused as exc:
                error = exc.message
            except av.error.ExitError:  # PyAV's timeout (interrupt callback)
                error = (f"no data for {self.read_timeout_s:g} s" if self._opened
                         else f"the camera did not answer within {self.open_timeout_s:g} s")
            except av.error.FFmpegError as exc:
                error = redact(f"{type(exc).__name__}: {exc.strerror or exc}")
            except Exception as exc:  # never let the thread die silently
                error = redact(f"{type(exc).__name__}: {exc}")
                log.error(kv("rtsp_thread_error", session_id=self.session_id, error=error))
            if self._stop.is_set():
                return
            failures = 0 if streamed else failures + 1
            if self.max_reconnects is not None and failures > self.max_reconnects:
                self._post("disconnected", (error, None))
                return
            delay = min(self.max_reconnect_delay_s, self.reconnect_delay_s * 2 ** max(0, failures - 1))
            delay *= random.uniform(0.8, 1.2)  # jitter: many cameras behind one failed switch
            self._post("disconnected", (error, delay))
            self._stop.wait(delay)

    def _pull_once(self) -> bool:
        """One connection: open, decode until the stream ends or stalls. True if it gave frames."""
        url = resolve(self.target, self.allow_private)
        options = {
            "rtsp_transport": self.transport,
            "protocol_whitelist": PROTOCOL_WHITELIST,
            "allowed_media_types": "video",
            "timeout": str(int(self.read_timeout_s * 1e6)),  # socket I/O (microseconds)
            "analyzeduration": "200000",  # opens in ~0.3 s instead of ~1.2 s
            "probesize": "32768",
            "max_delay": "500000",
        }
        streamed = False
        with av.open(url, mode="r", format="rtsp", options=options,
                     timeout=(self.open_timeout_s, self.read_timeout_s)) as container:
            if not container.streams.video:
                raise SourceRefused("unsupported_codec", "the camera's stream has no video track")
            stream = container.streams.video[0]
            # Frame threading: cameras (and x264 zerolatency) send sliced frames; see the notes.
            stream.codec_context.thread_type = "AUTO"
            resampler = Resampler(self.model.frame_rate)
            self._opened = True
            self._post("connected")
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:  # a corrupt packet: go on with the next one
                    self._post("error", ("decode_error", redact(f"corrupt video packet: {exc}")))
                    continue
                for frame in frames:
                    self.frames_decoded += 1
                    if frame.pts is None or frame.time_base is None:
                        continue  # before the stream's first timestamp (RTCP sync)
                    slots = resampler.push(float(frame.pts * frame.time_base))
                    if not slots:
                        continue  # between two model frames, or late
                    check_pixels(frame.width, frame.height, self.max_pixels)
                    rgb = fit_frame(frame, self.model.input_size, self.model.short_side, self.exact)
                    streamed = True
                    now = time.time()
                    for slot in slots:
                        if self._posted - self._appended >= MAX_PENDING_FRAMES:
                            self._post("dropped", 1)
                            continue
                        self._posted += 1
                        self._post("frame", Prepared(pts=resampler.last_pts, slot=slot, rgb=rgb, decoded_at=now))
        return streamed


async def start_puller(service: SessionService, record: SessionRecord, model: LoadedModel,
                       target: RtspUrl) -> RtspPuller:
    """Make the session's puller its frame producer and start it."""
    from service.ingest import StreamIngest

    async def report(code: str, message: str) -> None:
        await service.hub.broadcast(record.session_id, {"type": "error", "code": code, "message": message})

    ingest = StreamIngest(record, model, service.settings, service.store, service.metrics, None, report)
    puller = RtspPuller(service, record, model, ingest, target)
    if not await service.attach_producer(record.session_id, puller):  # the producer slot, across gateways
        raise ApiError(409, "stream_in_use", "the session already has a frame producer")
    puller.start()
    return puller
