"""A WebRTC peer as a session's source (aiortc): the browser's camera over ``POST /sessions/{id}/webrtc``.

The peer's video track feeds the session like a ``/stream`` socket would: a reader task takes
each decoded frame from ``track.recv()``, puts it on the model's frame grid by its pts (the same
:class:`~service.sources.frames.Resampler`) and puts it on a :class:`FramePipe` of one frame with
its fit as work for the decode pool: the latest frame wins when fitting falls behind, and the
dropped ones are counted. Nothing heavy happens in ``recv()``'s task. Labels go back on the data
channel the client opens with the label ``labels`` (and, as for every session, on the labels
WebSocket), through the same :class:`~service.pump.ResultPump` as the sockets.

A peer is the session's one frame producer in the hub, so deleting or expiring the session, or
shutting the server down, closes it; a peer whose connection fails or closes leaves by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Annotated, Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from pydantic import BaseModel, Field

from service import messages
from service.errors import ApiError
from service.logs import kv
from service.metrics import Metrics
from service.pump import ResultPump
from service.registry import LoadedModel
from service.settings import Settings
from service.sources.frames import Resampler, check_pixels, fit_frame
from service.sources.ingest import FrameSink
from service.sources.pipe import FramePipe, Pending
from service.store import Store

log = logging.getLogger("service.sources.webrtc")

MAX_SDP_BYTES = 64 * 1024
CHANNEL_MAX_BUFFERED = 1024 * 1024  # bytes waiting on the data channel before results are skipped
CONNECT_TIMEOUT_S = 30.0  # a peer that never connects is closed


class RtcOffer(BaseModel):
    sdp: Annotated[str, Field(max_length=MAX_SDP_BYTES, description="The client's SDP offer (all ICE "
                                                                     "candidates included: no trickle).")]
    type: Literal["offer"] = "offer"


class RtcAnswer(BaseModel):
    sdp: str
    type: Literal["answer"]


def ice_servers(settings_value: list[dict[str, Any]]) -> list[RTCIceServer]:
    return [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in settings_value]


class _ChannelConnection:
    """A data channel dressed as a connection for :class:`ResultPump`."""

    def __init__(self, channel: Any, peer: WebRtcPeer):
        self.channel = channel
        self.peer = peer
        self.session_id = peer.session_id
        self.closed = asyncio.Event()
        self.skipped = 0

    async def send(self, message: dict[str, Any]) -> bool:
        if self.closed.is_set() or self.channel.readyState != "open":
            self.closed.set()
            return False
        if self.channel.bufferedAmount > CHANNEL_MAX_BUFFERED:  # a client that does not read
            self.skipped += 1
            return True
        self.channel.send(json.dumps(message, separators=(",", ":")))
        return True

    async def close(self, code: int, reason: str = "", message: dict[str, Any] | None = None) -> None:
        """The pump gives up on the session (it is gone from the store): the peer goes too."""
        await self.peer.close(code, reason, message)


class WebRtcPeer:
    """One browser (or other WebRTC client) feeding one session through ``sink``."""

    def __init__(self, sink: FrameSink, model: LoadedModel, settings: Settings, store: Store, metrics: Metrics,
                 pool: Executor | None, on_closed: Callable[[WebRtcPeer], Awaitable[None]]):
        self.session_id = sink.session_id
        self.sink = sink
        self.model = model
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.pool = pool
        self.on_closed = on_closed
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(settings.webrtc_ice_servers)))
        self.channel: _ChannelConnection | None = None
        self.closed = asyncio.Event()
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None
        self.frames_received = 0
        self.last_error: str | None = None
        self._pipe: FramePipe | None = None
        self._tasks: list[asyncio.Task] = []
        self._watchdog: asyncio.Task | None = None

    # --- what the hub and the status see ---------------------------------------------------------

    @property
    def streaming(self) -> bool:
        return self.pc.connectionState == "connected"

    def status(self) -> dict[str, Any]:
        return {"type": "webrtc", "state": self.pc.connectionState, "connected_at": self.connected_at,
                "last_frame_at": self.last_frame_at, "last_error": self.last_error}

    async def close(self, code: int = 1000, reason: str = "", message: dict[str, Any] | None = None) -> None:
        """Close the peer (the session ended, the server stops, or the connection failed)."""
        if self.closed.is_set():
            return
        self.closed.set()
        if message is not None and self.channel is not None:
            await self.channel.send(message)
        if self.channel is not None:
            self.channel.closed.set()
        current = asyncio.current_task()
        for task in self._tasks + ([self._watchdog] if self._watchdog else []):
            if task is not current:  # the labels pump may be what closes the peer
                task.cancel()
        if self._pipe is not None:
            self._pipe.close()
        await self.sink.end_stream()
        try:
            await self.pc.close()
        except Exception:  # closing a half-negotiated peer must not fail a DELETE
            log.exception(kv("webrtc_close_failed", session_id=self.session_id))
        await self.on_closed(self)
        await self.sink.touch(force=True)
        log.info(kv("webrtc_closed", session_id=self.session_id, reason=reason or None,
                    frames_received=self.frames_received))

    # --- negotiation ---------------------------------------------------------------------------------

    async def answer(self, offer: RtcOffer) -> RTCSessionDescription:
        pc = self.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and self._pipe is None:
                self._pipe = FramePipe(self.sink, "webrtc", capacity=1, pool=self.pool, on_frame=self._on_frame)
                self._tasks.append(asyncio.create_task(self._read(track, self._pipe),
                                                       name=f"webrtc-read-{self.session_id}"))
            else:  # audio, or a second video track: read and drop, so that its queue never grows
                self._tasks.append(asyncio.create_task(_discard(track), name=f"webrtc-discard-{self.session_id}"))

        @pc.on("datachannel")
        def on_datachannel(channel: Any) -> None:
            if channel.label != "labels" or self.channel is not None:
                return
            self.channel = _ChannelConnection(channel, self)
            self._tasks.append(asyncio.create_task(self._pump(self.channel), name=f"webrtc-labels-{self.session_id}"))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            state = pc.connectionState
            log.info(kv("webrtc_state", session_id=self.session_id, state=state))
            if state == "connected" and self.connected_at is None:
                self.connected_at = time.time()
            elif state in ("failed", "closed"):
                self.last_error = self.last_error or f"connection {state}"
                await self.close(reason=f"connection_{state}")

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type=offer.type))
        if not any(t.kind == "video" for t in pc.getTransceivers()):
            raise ApiError(422, "no_video", "the offer has no video track")
        await pc.setLocalDescription(await pc.createAnswer())  # gathers every candidate (no trickle)
        self._watchdog = asyncio.create_task(self._connect_or_close(), name=f"webrtc-watchdog-{self.session_id}")
        return pc.localDescription

    async def _connect_or_close(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.connected_at is None and not self.closed.is_set():
            self.last_error = f"not connected within {CONNECT_TIMEOUT_S:g} s"
            self._watchdog = None  # close() must not cancel the task it runs in
            await self.close(reason="connect_timeout")

    # --- frames in -----------------------------------------------------------------------------------

    async def _read(self, track: Any, pipe: FramePipe) -> None:
        """Only bookkeeping per frame: place it on the grid; the pipe keeps the latest."""
        resampler = Resampler(self.model.frame_rate)
        size, short_side = self.model.input_size, self.model.short_side
        max_pixels, exact = self.settings.max_frame_pixels, self.settings.exact_preprocess
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrived_at = time.time()
            self.frames_received += 1
            if frame.pts is None or frame.time_base is None:
                continue
            slots = resampler.push(float(frame.pts * frame.time_base))
            if not slots:
                continue  # between two model frames (or late)

            def work(frame: Any = frame) -> Any:
                check_pixels(frame.width, frame.height, max_pixels)
                return fit_frame(frame, size, short_side, exact)

            pipe.put(Pending(pts=resampler.last_pts, slots=slots, arrived_at=arrived_at, work=work))

    async def _on_frame(self, frame: Pending) -> None:
        self.last_frame_at = frame.arrived_at

    # --- labels out ------------------------------------------------------------------------------------

    async def _pump(self, channel: _ChannelConnection) -> None:
        last = await self.store.results.last(self.session_id)
        after = last.seq if last else 0
        await channel.send(messages.session(self.session_id, self.model.name, self.model.weights, after,
                                            frame_rate=self.model.frame_rate, input_size=self.model.input_size))
        await ResultPump(channel, self.store, after).run()

    async def report(self, code: str, message: str) -> None:
        if self.channel is not None:
            await self.channel.send(messages.error(code, message))


async def _discard(track: Any) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        return
