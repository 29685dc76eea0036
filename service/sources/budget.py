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
* **Pace**: each stream decodes at most ``decode_max_pixel_rate`` coded pixels per second (a token
  bucket holding one second): over it the decoder thread waits, so a WebSocket sender is slowed by
  TCP, as it is when the decoder falls behind, and an RTSP camera's stream falls behind.
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


class DecodeBudget:
    """Coded pixels shared by the streams being decoded; see the module docstring."""

    def __init__(self, max_pixels: int = 0, max_pixel_rate: float = 0.0, nice: int = 0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pixels = max_pixels
        self.max_pixel_rate = max_pixel_rate
        self.nice = nice
        self.clock = clock
        self.reserved = 0  # coded pixels of the streams decoding now
        self.streams = 0
        self.refused = 0  # streams refused since the start
        self._logged_at = -REFUSAL_LOG_EVERY_S
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> DecodeBudget:
        return cls(settings.decode_budget_pixels, settings.decode_max_pixel_rate, settings.decode_nice)

    def stream(self, stopped: Callable[[], bool] = lambda: False) -> StreamBudget:
        return StreamBudget(self, stopped)

    def _take(self, pixels: int) -> None:
        with self._lock:
            if self.max_pixels and self.reserved + pixels > self.max_pixels:
                busy, streams = self.reserved, self.streams
            else:
                self.reserved += pixels
                self.streams += 1
                return
        self.refused += 1
        now = self.clock()
        if now - self._logged_at >= REFUSAL_LOG_EVERY_S:  # a client retrying at once must not flood the log
            self._logged_at = now
            log.warning(kv("decode_refused", pixels=pixels, reserved=busy, streams=streams, budget=self.max_pixels,
                           refused_total=self.refused))
        raise MediaError("decoder_busy", (
            f"the server is decoding as many video pixels as it allows ({streams} streams, "
            f"{busy / 1e6:.1f} of {self.max_pixels / 1e6:.1f} Mpx); retry later or send a smaller video"))

    def _give(self, pixels: int) -> None:
        with self._lock:
            self.reserved -= pixels
            self.streams -= 1


class StreamBudget:
    """One stream's share: its reservation and its pace (used by the stream's decoder thread only)."""

    def __init__(self, budget: DecodeBudget, stopped: Callable[[], bool]) -> None:
        self.budget = budget
        self.stopped = stopped
        self.pixels = 0  # reserved
        self._tokens = float(budget.max_pixel_rate)  # a second's worth to start with
        self._at = budget.clock()

    def __enter__(self) -> StreamBudget:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def reserve(self, width: int, height: int) -> None:
        """Hold ``width x height`` coded pixels (again after a size change); ``decoder_busy`` if they do not fit."""
        pixels = width * height
        if pixels == self.pixels:
            return
        self.release()
        self.budget._take(pixels)
        self.pixels = pixels

    def release(self) -> None:
        if self.pixels:
            self.budget._give(self.pixels)
            self.pixels = 0

    def pace(self, pixels: int, sleep: Callable[[float], None] = time.sleep) -> None:
        """Spend ``pixels`` of this stream's rate, waiting first while it is overspent."""
        rate = self.budget.max_pixel_rate
        if not rate:
            return
        now = self.budget.clock()
        self._tokens = min(rate, self._tokens + (now - self._at) * rate)
        self._at = now
        while self._tokens < 0 and not self.stopped():
            sleep(min(PACE_SLICE_S, max(PACE_MIN_S, -self._tokens / rate)))
            now = self.budget.clock()
            self._tokens = min(rate, self._tokens + (now - self._at) * rate)
            self._at = now
        self._tokens -= pixels
