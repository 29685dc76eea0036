"""What video decoding may take from the server: memory, pace and CPU priority.

A video stream's decoder holds a few pictures of its *coded* size (references, the picture being
decoded, threads' pictures): about 25 bytes per coded pixel measured with FFmpeg's H.264 decoder
(a 3840x2160 stream: ~200 MB). And it spends CPU on every picture of the stream, also on those the
model never sees (a 60 fps stream for a 5 fps model). Three limits keep a hostile or careless
stream from taking what other sessions need:

* **Memory**: :class:`DecodeBudget` shares ``decode_budget_pixels`` coded pixels among the
  streams being decoded at once (WebSocket video and RTSP cameras of this process). A stream
  reserves its coded size when the demuxer has parsed it, before its first picture is decoded; one
  that does not fit is refused with ``decoder_busy`` (retry later, or send a smaller stream) and
  holds nothing. The reservation goes back when the stream ends.
* **Pace**: each stream decodes at most ``decode_max_pixel_rate`` coded pixels per second, and all
  of them together at most ``decode_total_pixel_rate`` (token buckets holding one second): over
  either the decoder thread waits, so a WebSocket sender is slowed by TCP, as it is when the
  decoder falls behind, and an RTSP camera's stream falls behind. The total bounds what many small
  streams (the pixel budget admits hundreds) can take from the cores.
* **Priority**: decode threads (video, RTSP, still images) run ``decode_nice`` steps nicer than the
  event loop and the inference thread, which serve every session: when the cores are short, a
  session's decoding waits, not everyone's labels.

``0`` turns a limit off.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import MediaError
from service.logs import kv

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.sources.budget")

PACE_SLICE_S = 0.05  # a paced decoder looks at ``stopped()`` this often
REFUSAL_LOG_EVERY_S = 10.0
PACE_MIN_S = 0.001  # and sleeps at least this long (a deficit of a few pixels: no busy loop)


def lower_priority(steps: int) -> None:
    """Make the calling thread ``steps`` nicer (Linux: a thread's own nice value); no-op elsewhere."""
    if steps <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + steps))
    except OSError:  # not allowed here (a sandbox): decoding runs at the process's priority
        pass


class _Bucket:
    """A token bucket of pixels per second holding one second; shared between threads when ``lock``."""

    def __init__(self, rate: float, clock: Callable[[], float], lock: threading.Lock | None = None) -> None:
        self.rate, self.clock, self.lock = rate, clock, lock
        self.tokens = float(rate)  # a second's worth to start with
        self.at = clock()

    def deficit_s(self) -> float:
        """How long until the bucket is out of debt (0: a picture may be decoded now)."""
        if not self.rate:
            return 0.0
        with self.lock or _NO_LOCK:
            now = self.clock()
            self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
            self.at = now
            return max(0.0, -self.tokens / self.rate)

    def spend(self, pixels: int) -> None:
        if self.rate:
            with self.lock or _NO_LOCK:
                self.tokens -= pixels


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_LOCK = _NoLock()


class DecodeBudget:
    """Coded pixels shared by the streams being decoded, and their pace; see the module docstring."""

    def __init__(self, max_pixels: int = 0, max_pixel_rate: float = 0.0, nice: int = 0, *,
                 total_pixel_rate: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pixels = max_pixels
        self.max_pixel_rate = max_pixel_rate
        self.nice = nice
        self.clock = clock
        self.total = _Bucket(total_pixel_rate, clock, threading.Lock())  # every stream's decoding together
        self.reserved = 0  # coded pixels of the streams decoding now
        self.streams = 0
        self.refused = 0  # streams refused since the start
        self._logged_at = -REFUSAL_LOG_EVERY_S
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeBudget:
        total = settings.decode_total_pixel_rate
        if total is None:  # a 1080p30 stream's worth per core
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            total = cores * 1920 * 1080 * 30
        return cls(settings.decode_budget_pixels, settings.decode_max_pixel_rate, settings.decode_nice,
                   total_pixel_rate=total)

    def stream(self, stopped: Callable[[], bool] = lambda: False, name: str = "") -> StreamBudget:
        return StreamBudget(self, stopped, name)

    def _resize(self, old: int, new: int, name: str) -> None:
        """A stream's reservation from ``old`` to ``new`` pixels, in one step (a stream that shrinks
        is never refused); ``decoder_busy`` if ``new`` does not fit (``old`` is then kept)."""
        with self._lock:
            if not (self.max_pixels and new > old and self.reserved - old + new > self.max_pixels):
                self.reserved += new - old
                self.streams += (new > 0) - (old > 0)
                return
            busy, streams = self.reserved, self.streams
            self.refused += 1
            now = self.clock()
            logged = now - self._logged_at >= REFUSAL_LOG_EVERY_S
            if logged:
                self._logged_at = now
        if logged:  # at most every REFUSAL_LOG_EVERY_S: a client retrying at once must not flood the log
            log.warning(kv("decode_refused", source=name, pixels=new, reserved=busy, streams=streams,
                           budget=self.max_pixels, refused_total=self.refused))
        raise MediaError("decoder_busy", (
            f"the server is decoding as many video pixels as it allows ({streams} streams, "
            f"{busy / 1e6:.1f} of {self.max_pixels / 1e6:.1f} Mpx); retry later or send a smaller video"))


class StreamBudget:
    """One stream's share: its reservation and its pace (used by the stream's decoder thread only)."""

    def __init__(self, budget: DecodeBudget, stopped: Callable[[], bool], name: str = "") -> None:
        self.budget = budget
        self.stopped = stopped
        self.name = name
        self.pixels = 0  # reserved
        self._own = _Bucket(budget.max_pixel_rate, budget.clock)

    def __enter__(self) -> StreamBudget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def reserve(self, width: int, height: int) -> None:
        """Hold ``width x height`` coded pixels (again after a size change); ``decoder_busy`` if they do not fit."""
        pixels = width * height
        if pixels != self.pixels:
            self.budget._resize(self.pixels, pixels, self.name)
            self.pixels = pixels

    def release(self) -> None:
        if self.pixels:
            self.budget._resize(self.pixels, 0, self.name)
            self.pixels = 0

    def pace(self, pixels: int, sleep: Callable[[float], None] = time.sleep) -> None:
        """Spend ``pixels`` of this stream's rate and of every stream's, waiting first while either is overspent."""
        while not self.stopped():
            wait = max(self._own.deficit_s(), self.budget.total.deficit_s())
            if wait <= 0:
                break
            sleep(min(PACE_SLICE_S, max(PACE_MIN_S, wait)))
        self._own.spend(pixels)
        self.budget.total.spend(pixels)
