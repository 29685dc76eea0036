"""Session lifecycle on the gateway side: create, look up, authorise, list, delete, expire.

Also the one frame producer of each session across gateway replicas (a ``/stream`` socket, an
RTSP puller or a WebRTC peer, held in the :class:`~service.hub.ConnectionHub` here and in a
producer slot of the store that other gateways respect), and the sources the server runs itself:
:meth:`SessionService.start_camera` and :meth:`SessionService.open_webrtc`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import secrets
import time
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from service import messages
from service.admission import Admission
from service.api.schemas import LastResult, SessionCreate, SessionStatus
from service.errors import ApiError, CloseCode, shown
from service.hub import Closable, ConnectionHub
from service.logs import kv
from service.metrics import Metrics
from service.options import BackpressureOptions, EventOptions, SessionOptions, SourceOptions, WindowOptions
from service.registry import LoadedModel, ModelRegistry
from service.settings import Settings
from service.sources.budget import DecodeBudget
from service.sources.ingest import FrameSink
from service.sources.rtsp import RtspPuller
from service.sources.urls import RtspUrl, check_source, check_webhook
from service.store import STORE_ERRORS, ClientSessionsFull, SessionRecord, SessionsFull, Store

if TYPE_CHECKING:
    from service.sources.webrtc import WebRtcPeer
    from service.worker.loop import InferenceLoop

log = logging.getLogger("service.sessions")

# A producer slot lives this long unless its gateway renews it (every third of it): after a
# gateway dies, its sessions accept a new producer on another gateway within this time.
PRODUCER_TTL_MS = 3000
CAMERA_SCAN_S = 1.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionService:
    def __init__(self, settings: Settings, store: Store, registry: ModelRegistry, metrics: Metrics,
                 inference: InferenceLoop | None = None):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.inference = inference
        self.metrics = metrics
        self.hub = ConnectionHub()
        self.admission = Admission(settings, store, inference)
        self.decode_budget = DecodeBudget.from_settings(settings)  # shared by this gateway's video decoders
        metrics.decode_pixels.set_function(lambda: self.decode_budget.reserved)
        self.gateway_id = secrets.token_hex(6)
        self._producers: dict[tuple[str, int], asyncio.Task] = {}
        self._cameras: asyncio.Task | None = None
        self.draining = False
        self._reaper: asyncio.Task | None = None

    # --- lifecycle of the service ---------------------------------------------------------------

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(), name="session-reaper")
        if self.store.kind == "redis":  # several gateways: any of them takes over a dead one's cameras
            self._cameras = asyncio.create_task(self._adopt_cameras_forever(), name="camera-takeover")

    async def stop(self) -> None:
        for task in [*self._producers.values(), *([self._cameras] if self._cameras else [])]:
            task.cancel()
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass

    async def drain(self) -> None:
        """Shutdown: refuse new sockets and close the open ones with 1012 (service restart)."""
        if self.draining:
            return
        self.draining = True
        connections = len(self.hub.connections())
        await self.hub.close_all(CloseCode.SERVICE_RESTART, "server shutting down", messages.closing("shutdown"))
        log.info(kv("drained", connections=connections))

    async def _adopt_cameras_forever(self) -> None:
        """Exactly one gateway pulls each RTSP camera: the one holding the session's producer slot
        (a Redis key with a TTL that its holder renews). Every ``CAMERA_SCAN_S`` each gateway tries
        to start the pull of RTSP sessions that no gateway holds: the slot admits one of them."""
        while True:
            await asyncio.sleep(CAMERA_SCAN_S)
            if self.draining:
                continue
            try:
                cursor = None
                while True:
                    records, cursor = await self.store.sessions.list(cursor, 200)
                    for record in records:
                        if (record.options.source.type == "rtsp"
                                and record.session_id not in self.hub.streams and "source_url" in record.extra):
                            await self._adopt_camera(record)
                    if not cursor:
                        break
            except STORE_ERRORS:
                pass  # the store is away; the next scan tries again
            except Exception:
                log.exception(kv("camera_takeover_failed"))

    async def _adopt_camera(self, record: SessionRecord) -> None:
        try:
            camera = await check_source(record.extra["source_url"], self.settings.rtsp_allow_private_addresses)
            loaded = await self.registry.load(record.model, record.weights)
            await self.start_camera(record, loaded, camera)
        except ApiError as exc:
            if exc.status != 409:  # 409: another gateway holds it (the usual case)
                log.warning(kv("camera_takeover_refused", session_id=record.session_id, code=exc.code))
            return
        log.info(kv("camera_taken_over", session_id=record.session_id, url=camera.redacted))

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reaper_interval_s)
            try:
                for session_id in await self.store.sessions.expired(time.time()):
                    await self.delete(session_id, reason="expired")
            except Exception:
                log.exception(kv("reaper_failed"))

    # --- sessions -------------------------------------------------------------------------------

    async def create(self, request: SessionCreate, source: str | None = None,
                     client: str | None = None) -> tuple[SessionRecord, str, LoadedModel]:
        """A new session for ``client`` (an API key's hash or an address: the rate limit's key)."""
        if client is not None:
            self.admission.check_rate(client)
        taken = await self.admission.check_load()  # before a model is loaded for it
        try:
            return await self._create(request, source, client)
        except BaseException:
            self.admission.give_back(taken)
            raise

    async def _create(self, request: SessionCreate, source: str | None,
                      client: str | None) -> tuple[SessionRecord, str, LoadedModel]:
        if await self.store.sessions.count() >= self.settings.max_sessions:
            raise self._full()  # early, before loading a model; the create itself checks atomically
        camera = None
        if request.source.type == "rtsp":  # a refused camera URL makes no session
            camera = await check_source(request.source.url, self.settings.rtsp_allow_private_addresses)
        webhook = None
        if request.events.webhook_url:  # a refused webhook URL makes no session either
            webhook = await check_webhook(request.events.webhook_url, self.settings.rtsp_allow_private_addresses)
        try:
            loaded = await self.registry.load(request.model, request.weights)
        except ApiError:
            raise
        except Exception as exc:
            log.exception(kv("model_load_failed", model=request.model, weights=request.weights))
            raise ApiError(503, "model_unavailable", f"model could not be loaded: {exc}") from None
        self.metrics.model_loaded(loaded.name)
        options = self._options(request, loaded, camera, webhook)
        extra: dict[str, Any] = {}
        if camera is not None:  # options are returned and logged: the URL's secrets stay in `extra`
            extra["source_url"] = camera.url
        if webhook is not None:
            extra["webhook_url"] = webhook.url
        idle_timeout = min(request.idle_timeout_s or self.settings.idle_timeout_s, self.settings.max_idle_timeout_s)
        token = secrets.token_urlsafe(24)
        now = time.time()
        record = SessionRecord(
            session_id="s_" + secrets.token_hex(8), token_hash=hash_token(token), model=loaded.name,
            weights=loaded.weights, options=options, created_at=now, idle_timeout_s=idle_timeout,
            last_active_at=now, extra=extra,
            unused_timeout_s=0.0 if camera is not None else self.settings.unused_session_timeout_s,
            client=client or "",
        )
        try:
            await self.store.sessions.create(record, max_sessions=self.settings.max_sessions,
                                             max_per_client=self.settings.max_sessions_per_client or None)
        except ClientSessionsFull:
            raise ApiError(429, "too_many_client_sessions", "this client holds its maximum of "
                           f"{self.settings.max_sessions_per_client} sessions; delete one or retry later",
                           headers={"Retry-After": "5"}) from None
        except SessionsFull:
            raise self._full() from None
        if camera is not None:
            try:
                await self.start_camera(record, loaded, camera)
            except BaseException:
                await self.store.delete_session(record.session_id)
                raise
        self.metrics.sessions_created.labels(source or request.source.type).inc()
        self.metrics.sessions_active.set(await self.store.sessions.count())
        log.info(kv("session_created", session_id=record.session_id, model=loaded.name, weights=loaded.weights,
                    options=json.dumps(options.to_dict(), separators=(",", ":"))))
        return record, token, loaded

    def _full(self) -> ApiError:
        return ApiError(429, "too_many_sessions", f"the server holds its maximum of {self.settings.max_sessions} "
                        "sessions", headers={"Retry-After": "5"})

    def _options(self, request: SessionCreate, loaded: LoadedModel, camera: RtspUrl | None,
                 webhook: RtspUrl | None = None) -> SessionOptions:
        """The request resolved against the model and the server's limits."""
        window, backpressure = request.window, request.backpressure
        limit = self.settings.max_backlog or max(1, math.ceil(self.settings.max_backlog_s * loaded.frame_rate))
        source = request.source.model_dump()
        if camera is not None:
            source["url"] = camera.redacted
        return SessionOptions(
            source=SourceOptions(**source),
            top_k=min(request.top_k, len(loaded.labels)),
            min_score=request.min_score,
            smoothing=request.smoothing,
            window=WindowOptions(policy=window.policy, frames=None if window.policy == "unbounded"
                                 else (window.frames or loaded.clip_frames)),
            backpressure=BackpressureOptions(
                policy=backpressure.policy or self.settings.drop_policy,
                max_backlog=min(backpressure.max_backlog or limit, limit)),
            events=EventOptions(**{**request.events.model_dump(), "webhook_url": webhook.redacted if webhook else None}),
        )

    async def get(self, session_id: str) -> SessionRecord:
        record = await self.store.sessions.get(session_id)
        if record is None:
            raise ApiError(404, "session_not_found", f"no session {shown(session_id)} (never created, deleted or expired)")
        return record

    def check_token(self, record: SessionRecord, token: str | None, api_key: str | None = None) -> None:
        """A session's token, or any API key when keys are configured, opens its routes."""
        if api_key and self.api_key_valid(api_key):
            return
        if not token:
            raise ApiError(401, "token_missing", "this session's token is required (Authorization: Bearer)",
                           headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(hash_token(token), record.token_hash):
            raise ApiError(403, "token_invalid", "the token does not match this session")

    def api_key_valid(self, key: str) -> bool:
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.settings.api_keys)

    def check_api_key(self, key: str | None) -> None:
        if not self.settings.api_keys:
            return
        if not key:
            raise ApiError(401, "api_key_missing", "an API key is required (Authorization: Bearer or X-API-Key)",
                           headers={"WWW-Authenticate": "Bearer"})
        if not self.api_key_valid(key):
            raise ApiError(403, "api_key_invalid", "the API key is not valid")

    async def status(self, record: SessionRecord) -> SessionStatus:
        last = await self.store.results.last(record.session_id)
        producer = self.hub.streams.get(record.session_id)  # a /stream socket, RTSP puller or WebRTC peer
        if producer is not None:
            streaming = getattr(producer, "streaming", True)
        else:  # maybe on another gateway: its producer slot says so
            streaming = await self.store.sessions.producer(record.session_id) is not None
        return SessionStatus(
            session_id=record.session_id, model=record.model, weights=record.weights,
            state="streaming" if streaming else "idle",
            created_at=record.created_at, expires_at=record.expires_at,
            frames_received=record.frames_received, frames_processed=record.frames_processed,
            frames_dropped=record.frames_dropped, backlog=await self.store.streams.backlog(record.session_id),
            lag_ms=round(last.lag_ms, 2) if last else None,
            last_result=LastResult(seq=last.seq, pts=last.pts, frame_index=last.frame_index, labels=last.labels)
            if last else None,
            options=record.options.to_dict(),
            source=producer.status() if hasattr(producer, "status") else None,
        )

    async def delete(self, session_id: str, reason: str = "deleted") -> bool:
        if await self.store.sessions.get(session_id) is None:
            await self.store.delete_session(session_id)  # what is left of it (listings, keys) goes too
            return False
        await self.hub.close_session(session_id, CloseCode.GONE, f"session {reason}",
                                     messages.error(f"session_{reason}", f"the session was {reason}"))
        if self.inference is not None:
            self.inference.forget(session_id)
        existed = await self.store.delete_session(session_id)
        if existed:
            self.metrics.sessions_closed.labels(reason).inc()
            self.metrics.sessions_active.set(await self.store.sessions.count())
            log.info(kv("session_closed", session_id=session_id, reason=reason))
        return existed

    # --- the one producer of a session, across gateway replicas --------------------------------

    async def attach_producer(self, session_id: str, connection: Closable) -> bool:
        """Make ``connection`` the session's frame producer, here and in the store (so that a
        second producer on another gateway is refused too); False if another one is attached."""
        if not self.hub.attach_stream(session_id, connection):
            return False
        owner = f"{self.gateway_id}:{id(connection):x}"
        try:
            claimed = await self.store.sessions.claim_producer(session_id, owner, PRODUCER_TTL_MS)
        except STORE_ERRORS:
            claimed = True  # the store is away: this gateway's rule only, until it is back
        if not claimed:
            self.hub.detach_stream(session_id, connection)
            return False
        self._producers[(session_id, id(connection))] = asyncio.create_task(
            self._keep_producer(session_id, owner, connection), name=f"producer-{session_id}")
        return True

    async def detach_producer(self, session_id: str, connection: Closable) -> None:
        self.hub.detach_stream(session_id, connection)
        task = self._producers.pop((session_id, id(connection)), None)
        if task is not None:
            task.cancel()
        try:
            await self.store.sessions.release_producer(session_id, f"{self.gateway_id}:{id(connection):x}")
        except STORE_ERRORS:
            pass  # it expires by itself

    async def _keep_producer(self, session_id: str, owner: str, connection: Closable) -> None:
        while True:
            await asyncio.sleep(PRODUCER_TTL_MS / 3000.0)
            try:
                held = await self.store.sessions.claim_producer(session_id, owner, PRODUCER_TTL_MS)
            except STORE_ERRORS:
                continue
            if not held:  # another gateway took the slot (this one stalled): one producer only
                log.warning(kv("producer_slot_lost", session_id=session_id))
                # In a task of its own: the close detaches the producer, which cancels this task.
                asyncio.get_running_loop().create_task(connection.close(
                    CloseCode.CONFLICT, "another client streams into this session",
                    messages.error("stream_in_use", "another gateway took this session's frames over; reconnect "
                                   "to go on")))
                return

    async def touch(self, session_id: str) -> None:
        await self.store.sessions.touch(session_id, time.time())

    # --- sources the server runs itself ------------------------------------------------------------

    def sink(self, record: SessionRecord, report: Any = None) -> FrameSink:
        """The frame sink of a new producer of ``record``'s session."""
        async def to_watchers(code: str, message: str) -> None:
            await self.hub.broadcast(record.session_id, messages.error(code, message))

        return FrameSink(record, self.store, self.metrics, report or to_watchers, touch=self.touch)

    async def start_camera(self, record: SessionRecord, loaded: LoadedModel, camera: RtspUrl) -> RtspPuller:
        """Make an RTSP puller the session's frame producer and start it (409 when one is attached)."""
        session_id = record.session_id

        async def broadcast(message: dict[str, Any]) -> None:
            await self.hub.broadcast(session_id, message)

        async def stopped(puller: RtspPuller) -> None:
            await self.detach_producer(session_id, puller)

        sink = self.sink(record)
        puller = RtspPuller(sink, loaded, camera, record.options.source, self.settings, self.metrics,
                            broadcast=broadcast, on_stopped=stopped, budget=self.decode_budget)
        sink.on_lost = puller.stop
        if not await self.attach_producer(session_id, puller):  # the producer slot, across gateways
            raise ApiError(409, "stream_in_use", "the session already has a frame producer")
        puller.start()
        return puller

    async def open_webrtc(self, record: SessionRecord, loaded: LoadedModel, pool: Executor | None) -> WebRtcPeer:
        """A WebRTC peer as the session's frame producer (409 when one is attached)."""
        from service.sources.webrtc import WebRtcPeer  # aiortc is heavy: loaded on the first offer

        session_id = record.session_id
        if record.options.source.type == "rtsp":
            raise ApiError(409, "source_conflict", "this session's frames come from its RTSP camera")

        async def closed(peer: WebRtcPeer) -> None:
            await self.detach_producer(session_id, peer)
            self.metrics.sources_active.labels("webrtc").dec()

        sink = self.sink(record)
        peer = WebRtcPeer(sink, loaded, self.settings, self.store, self.metrics, pool, on_closed=closed)
        sink.report = peer.report

        async def lost() -> None:
            await peer.close(CloseCode.GONE, "session lost", messages.error("session_lost", "the session is gone"))

        sink.on_lost = lost
        if session_id in self.hub.streams or not await self.attach_producer(session_id, peer):
            await peer.pc.close()
            raise ApiError(409, "stream_in_use", "another client already streams frames into this session")
        self.metrics.sources_active.labels("webrtc").inc()
        return peer
