"""WebRTC peers as session sources: ``POST /sessions/{id}/webrtc`` takes an SDP offer (aiortc).

The peer's video track feeds the session like a ``/stream`` socket would: a reader task takes
each decoded frame from ``track.recv()``, puts it on the model's frame grid by its pts (the same
:class:`service.media.Resampler`) and keeps only the latest frame that fills a slot; a second task
fits that frame off the event loop (``fit_frame`` in the decode pool) and hands it to a
:class:`StreamIngest`. Nothing heavy happens in ``recv()``'s task, and a frame that waits while a
newer one arrives is dropped and counted (the inference itself runs in the inference loop, as
for every source). Labels go back on the data channel the client opens with the label
``labels`` (and, as for every session, on the labels WebSocket).

A peer is the session's one frame producer in the :class:`ConnectionHub`, so deleting or
expiring the session, or shutting the server down, closes it; a peer whose connection fails or
closes leaves the hub by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Annotated, Any, Literal

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from service.api import ERRORS, ApiKey, Bearer, Service, TokenQuery
from service.errors import ApiError, MediaError
from service.ingest import StreamIngest
from service.logs import kv
from service.media import Prepared, Resampler, fit_frame
from service.sessions import SessionService
from service.store import SessionRecord
from service.ws import ResultPump

log = logging.getLogger("service.webrtc")
router = APIRouter(tags=["sessions"], responses=ERRORS)

MAX_SDP_BYTES = 64 * 1024
TOUCH_EVERY_S = 1.0
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
    """A data channel dressed as a ``ws.Connection`` for :class:`ResultPump`."""

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
    """One browser (or other WebRTC client) feeding one session."""

    def __init__(self, service: SessionService, record: SessionRecord, model: Any, image_pool: Any):
        self.service = service
        self.session_id = record.session_id
        self.model = model
        self.image_pool = image_pool
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(service.settings.webrtc_ice_servers)))
        self.ingest = StreamIngest(record, model, service.settings, service.store, service.metrics, image_pool,
                                   self._report)
        self.channel: _ChannelConnection | None = None
        self.closed = asyncio.Event()
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None
        self.frames_received = 0
        self.last_error: str | None = None
        self._latest: tuple[Any, float, list[int], float] | None = None  # frame, pts, slots, arrived_at
        self._latest_ready = asyncio.Event()
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
        for task in self._tasks + ([self._watchdog] if self._watchdog else []):
            task.cancel()
        await self.ingest.close()
        try:
            await self.pc.close()
        except Exception:  # closing a half-negotiated peer must not fail a DELETE
            log.exception(kv("webrtc_close_failed", session_id=self.session_id))
        await self.service.detach_producer(self.session_id, self)
        self.service.metrics.sources_active.labels("webrtc").dec()
        await self.service.touch(self.session_id)
        log.info(kv("webrtc_closed", session_id=self.session_id, reason=reason or None,
                    frames_received=self.frames_received))

    # --- negotiation ---------------------------------------------------------------------------------

    async def answer(self, offer: RtcOffer) -> RTCSessionDescription:
        pc = self.pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video" and not any(t.get_name().startswith("webrtc-read") for t in self._tasks):
                self._tasks.append(asyncio.create_task(self._read(track), name=f"webrtc-read-{self.session_id}"))
                self._tasks.append(asyncio.create_task(self._prepare(), name=f"webrtc-prepare-{self.session_id}"))
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

    async def _read(self, track: Any) -> None:
        """Only bookkeeping per frame: place it on the grid, keep it if it fills a slot."""
        resampler = Resampler(self.model.frame_rate)
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
            if self._latest is not None:  # the previous one still waits: the newer frame wins
                lost = len(self._latest[2])
                self.service.metrics.frames_dropped.labels("backpressure").inc(lost)
                await self.service.store.sessions.add_counters(self.session_id, frames_dropped=lost)
            self._latest = (frame, resampler.last_pts, slots, arrived_at)
            self._latest_ready.set()

    async def _prepare(self) -> None:
        """Fit the latest frame off the loop, then into the session (the /stream path's append)."""
        loop = asyncio.get_running_loop()
        settings = self.service.settings
        size, short_side = self.model.input_size, self.model.short_side
        last_touch = 0.0
        while True:
            await self._latest_ready.wait()
            self._latest_ready.clear()
            if self._latest is None:
                continue
            frame, pts, slots, arrived_at = self._latest
            self._latest = None
            try:
                if frame.width * frame.height > settings.max_frame_pixels:
                    raise MediaError("frame_too_large", f"frame {frame.width}x{frame.height} is over the limit "
                                     f"of {settings.max_frame_pixels} pixels")
                rgb = await loop.run_in_executor(self.image_pool, fit_frame, frame, size, short_side,
                                                 settings.exact_preprocess)
            except MediaError as exc:
                await self.ingest.drop_frame(exc, frames=len(slots))
                continue
            for slot in slots:
                await self.ingest.add_frame(Prepared(pts=pts, slot=slot, rgb=rgb, decoded_at=arrived_at),
                                            kind="webrtc")
            self.last_frame_at = arrived_at
            if time.monotonic() - last_touch > TOUCH_EVERY_S:
                last_touch = time.monotonic()
                await self.service.touch(self.session_id)

    # --- labels out ------------------------------------------------------------------------------------

    async def _pump(self, channel: _ChannelConnection) -> None:
        last = await self.service.store.results.last(self.session_id)
        await channel.send({"type": "session", "session_id": self.session_id, "model": self.model.name,
                            "weights": self.model.weights, "frame_rate": self.model.frame_rate,
                            "input_size": self.model.input_size})
        await ResultPump(channel, self.service, last.seq if last else 0).run()

    async def _report(self, code: str, message: str) -> None:
        if self.channel is not None:
            await self.channel.send({"type": "error", "code": code, "message": message})


async def _discard(track: Any) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        return


@router.post("/sessions/{session_id}/webrtc", response_model=RtcAnswer, summary="Stream a session over WebRTC",
             description="Takes an SDP offer with a video track (and a data channel labelled `labels` for the "
             "results) and returns the answer. Needs the session's token or an API key. One frame producer "
             "per session: 409 while a `/stream` socket, a camera or another peer feeds it.")
async def offer(session_id: str, body: RtcOffer, request: Request, service: Service, bearer: Bearer,
                api_key: ApiKey, token: TokenQuery = None) -> RtcAnswer:
    record = await service.get(session_id)
    service.check_token(record, token or bearer, api_key)
    if service.draining:
        raise ApiError(503, "draining", "the server is shutting down")
    if record.options["source"]["type"] == "rtsp":
        raise ApiError(409, "source_conflict", "this session's frames come from its RTSP camera")
    if session_id in service.hub.streams:
        raise ApiError(409, "stream_in_use", "another client already streams frames into this session")
    loaded = service.registry.get_loaded(f"{record.model}:{record.weights}") or await service.registry.load(
        record.model, record.weights)
    peer = WebRtcPeer(service, record, loaded, request.app.state.image_pool)
    if not await service.attach_producer(session_id, peer):  # here and, with Redis, on every gateway
        await peer.pc.close()
        raise ApiError(409, "stream_in_use", "another client already streams frames into this session")
    service.metrics.sources_active.labels("webrtc").inc()
    try:
        answer = await peer.answer(body)
    except ApiError:
        await peer.close(reason="bad_offer")
        raise
    except Exception as exc:  # aiortc refuses SDP with ValueError and friends
        await peer.close(reason="bad_offer")
        raise ApiError(422, "bad_offer", f"cannot answer this offer: {exc}") from None
    log.info(kv("webrtc_answered", session_id=session_id))
    return RtcAnswer(sdp=answer.sdp, type="answer")
