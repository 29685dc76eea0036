"""The one path from a source to its session: a bounded, ordered queue into the ingest.

Every source (WebSocket images, WebSocket video, RTSP, WebRTC) puts what it has on a
:class:`FramePipe` — from its decode thread or from the event loop — and one task on the event
loop takes the items in order and hands them to the session's :class:`~service.sources.ingest.FrameSink`:

    source ──put()──▶ FramePipe (at most ``capacity`` frames waiting) ──task──▶ FrameSink ──▶ store

* A :class:`Pending` frame is either fitted already (decode threads fit as they decode) or
  carries the blocking ``work`` that makes it (decode + fit of a still image, fit of a WebRTC
  frame), which the pipe's task runs in the decode pool. Work for a frame that is dropped is
  never done.
* When ``capacity`` frames wait, ``drop_oldest`` removes the oldest waiting frame (its model
  frames are counted as dropped for backpressure); ``block`` makes :meth:`put` wait instead (a
  thread only), so a reader slows down rather than losing frames. On the event loop,
  :meth:`put_when_room` waits (asynchronously) for room instead, whatever the overflow.
* Errors and source events keep their place in the order and are never dropped.

The items cross from threads with ``call_soon_threadsafe`` only to wake the task: the queue itself
is a locked deque, so it is bounded even while the event loop is busy.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service.errors import MediaError
from service.logs import kv
from service.sources.frames import Prepared

if TYPE_CHECKING:
    from service.sources.ingest import FrameSink

log = logging.getLogger("service.sources.pipe")

Overflow = Literal["drop_oldest", "block"]


@dataclass
class Pending:
    """Model frames of one decoded picture: the grid ``slots`` it fills at ``pts``."""

    pts: float
    slots: list[int]
    arrived_at: float  # unix seconds: when the source had it (lag is measured from here)
    rgb: np.ndarray | None = None  # fitted already, or
    work: Callable[[], np.ndarray] | None = None  # the blocking decode/fit that makes it


class FramePipe:
    """One input stream's frames, in order, from a source into ``sink``; see the module docstring.

    ``kind`` names the source in metrics (``image``, ``video``, ``rtsp``, ``webrtc``);
    ``on_event(name, payload)`` receives the source's own events (:meth:`event`) in order, and
    ``on_frame(frame)`` is called after each frame reached the sink.
    """

    def __init__(self, sink: FrameSink, kind: str, *, capacity: int, overflow: Overflow = "drop_oldest",
                 pool: Executor | None = None,
                 on_event: Callable[[str, Any], Awaitable[None]] | None = None,
                 on_frame: Callable[[Pending], Awaitable[None]] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.sink = sink
        self.kind = kind
        self.capacity = capacity
        self.overflow = overflow
        self.pool = pool
        self.on_event = on_event
        self.on_frame = on_frame
        self._items: deque[tuple[str, Any]] = deque()
        self._frames = 0  # Pending items in _items
        self._lock = threading.Condition()
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._ended = asyncio.Event()
        self._busy = False  # the task holds an item it has not delivered yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()  # set when the task takes a frame out
        self._task = asyncio.create_task(self._run(), name=f"pipe-{kind}-{sink.session_id}")

    # --- from the source (any thread; put() with overflow=block: not the event loop's) ----------

    def put(self, frame: Pending) -> bool:
        """Queue a frame; False when the pipe is closed (the source should stop)."""
        with self._lock:
            while self.overflow == "block" and self._frames >= self.capacity and not self._closed:
                self._lock.wait(0.5)
            if self._closed:
                return False
            lost = 0
            if self._frames >= self.capacity:
                lost = self._drop_oldest()
            self._items.append(("frame", frame))
            self._frames += 1
        if lost:
            self._push("dropped", lost)
        self._wake()
        return True

    def error(self, error: MediaError, frames: int = 0) -> None:
        """Bad input: reported to the client; ``frames`` model frames are lost with it."""
        self._push("error", (error, frames))

    def event(self, name: str, payload: Any = None) -> None:
        """A source event for ``on_event``, delivered in order with the frames."""
        self._push("event", (name, payload))

    def end(self) -> None:
        """No more items: the task delivers what waits, then :meth:`wait_ended` returns."""
        self._push("end", None)

    # --- on the event loop --------------------------------------------------------------------

    async def put_when_room(self, frame: Pending) -> bool:
        """:meth:`put` for a source on the event loop: first wait until fewer than ``capacity``
        frames wait, so nothing is dropped and the loop is never blocked."""
        while self._frames >= self.capacity and not self._closed:
            self._room.clear()
            await self._room.wait()
        return self.put(frame)

    async def wait_ended(self) -> None:
        """Until every item before :meth:`end` is in the sink (or the pipe was closed)."""
        await self._ended.wait()

    async def wait_idle(self) -> None:
        """Until nothing waits and nothing is being delivered."""
        while self._items or self._busy:
            self._idle.clear()
            await self._idle.wait()

    def close(self) -> None:
        """Stop now: waiting items are discarded, a blocked :meth:`put` returns False."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._frames = 0
            self._lock.notify_all()
        self._task.cancel()
        self._ended.set()
        self._idle.set()
        self._room.set()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- internals ------------------------------------------------------------------------------

    def _drop_oldest(self) -> int:
        for index, (kind, item) in enumerate(self._items):
            if kind == "frame":
                del self._items[index]
                self._frames -= 1
                return len(item.slots)
        return 0

    def _push(self, kind: str, payload: Any) -> None:
        with self._lock:
            if self._closed:
                return
            self._items.append((kind, payload))
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._wakeup.set)
        except RuntimeError:  # the loop is closed: the server is gone, so is the source
            with self._lock:
                self._closed = True
                self._lock.notify_all()

    def _next(self) -> tuple[str, Any] | None:
        with self._lock:
            if not self._items:
                return None
            kind, item = self._items.popleft()
            if kind == "frame":
                self._frames -= 1
                self._lock.notify_all()
            self._busy = True
            return kind, item

    async def _run(self) -> None:
        try:
            while True:
                entry = self._next()
                if entry is None:
                    self._idle.set()
                    self._wakeup.clear()
                    if self._items:  # put between the check and the clear
                        continue
                    await self._wakeup.wait()
                    continue
                try:
                    if entry[0] == "frame":
                        self._room.set()
                    if not await self._deliver(*entry):
                        return
                except asyncio.CancelledError:
                    raise
                except Exception:  # one bad item must not stop the stream
                    log.exception(kv("pipe_item_failed", session_id=self.sink.session_id, source=self.kind,
                                     item=entry[0]))
                finally:
                    self._busy = False
        finally:
            self._ended.set()
            self._idle.set()

    async def _deliver(self, kind: str, item: Any) -> bool:
        sink = self.sink
        if kind == "frame":
            await self._frame(item)
        elif kind == "dropped":
            await sink.dropped(item, reason="backpressure")
        elif kind == "error":
            await sink.bad_input(*item)
        elif kind == "event":
            if self.on_event is not None:
                await self.on_event(*item)
        elif kind == "end":
            return False
        return True

    async def _frame(self, frame: Pending) -> None:
        rgb = frame.rgb
        if rgb is None and frame.work is not None:
            started = time.perf_counter()
            try:
                rgb = await self._loop.run_in_executor(self.pool, frame.work)
            except MediaError as exc:
                await self.sink.bad_input(exc, frames=len(frame.slots))
                return
            except Exception:  # a decoder bug must not kill the stream
                log.exception(kv("decode_crashed", session_id=self.sink.session_id, source=self.kind))
                await self.sink.bad_input(MediaError("decode_error", "the frame could not be decoded"),
                                          frames=len(frame.slots))
                return
            self.sink.metrics.decode_seconds.observe(time.perf_counter() - started)
        if rgb is None:
            return
        for slot in frame.slots:
            await self.sink.add(Prepared(pts=frame.pts, slot=slot, rgb=rgb, decoded_at=frame.arrived_at), self.kind)
        if self.on_frame is not None:
            await self.on_frame(frame)
