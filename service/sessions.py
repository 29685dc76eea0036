"""Session lifecycle on the gateway side: create, look up, authorise, list, delete, expire.

Also tracks the open WebSockets of each session (:class:`ConnectionHub`) so that deleting or
expiring a session, or shutting down, closes them with a documented code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from typing import Any, Protocol

from service import rtsp
from service.errors import ApiError, CloseCode
from service.inference import InferenceLoop
from service.logs import kv
from service.metrics import Metrics
from service.registry import LoadedModel, ModelRegistry
from service.schemas import LastResult, SessionCreate, SessionStatus
from service.settings import Settings
from service.store import STORE_ERRORS, SessionRecord, Store

log = logging.getLogger("service.sessions")

# A producer slot lives this long unless its gateway renews it (every third of it): after a
# gateway dies, its sessions accept a new producer on another gateway within this time.
PRODUCER_TTL_MS = 3000
CAMERA_SCAN_S = 1.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Closable(Protocol):
    async def close(self, code: int, reason: str, message: dict[str, Any] | None = None) -> None: ...


class ConnectionHub:
    """The sockets open on this gateway, per session: one frame producer, some watchers."""

    def __init__(self) -> None:
        self.streams: dict[str, Closable] = {}
        self.watchers: dict[str, set[Closable]] = {}

    def attach_stream(self, session_id: str, connection: Closable) -> bool:
        if session_id in self.streams:
            return False
        self.streams[session_id] = connection
        return True

    def detach_stream(self, session_id: str, connection: Closable) -> None:
        if self.streams.get(session_id) is connection:
            del self.streams[session_id]

    def add_watcher(self, session_id: str, connection: Closable, limit: int) -> bool:
        watchers = self.watchers.setdefault(session_id, set())
        if len(watchers) >= limit:
            return False
        watchers.add(connection)
        return True

    def remove_watcher(self, session_id: str, connection: Closable) -> None:
        watchers = self.watchers.get(session_id)
        if watchers is not None:
            watchers.discard(connection)
            if not watchers:
                del self.watchers[session_id]

    def connections(self, session_id: str | None = None) -> list[Closable]:
        ids = [session_id] if session_id else list({*self.streams, *self.watchers})
        found: list[Closable] = []
        for sid in ids:
            if sid in self.streams:
                found.append(self.streams[sid])
            found.extend(self.watchers.get(sid, ()))
        return found

    async def close_session(self, session_id: str, code: int, reason: str, message: dict | None = None) -> None:
        await asyncio.gather(*(c.close(code, reason, message) for c in self.connections(session_id)),
                             return_exceptions=True)

    async def broadcast(self, session_id: str, message: dict[str, Any]) -> None:
        """A message to the session's labels sockets (source events of an RTSP puller, say)."""
        await asyncio.gather(*(w.send(message) for w in list(self.watchers.get(session_id, ()))),
                             return_exceptions=True)

    async def close_all(self, code: int, reason: str, message: dict | None = None) -> None:
        await asyncio.gather(*(c.close(code, reason, message) for c in self.connections()),
                             return_exceptions=True)


class SessionService:
    def __init__(self, settings: Settings, store: Store, registry: ModelRegistry, inference: InferenceLoop | None,
                 metrics: Metrics):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.inference = inference
        self.metrics = metrics
        self.hub = ConnectionHub()
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
        await self.hub.close_all(CloseCode.SERVICE_RESTART, "server shutting down",
                                 {"type": "closing", "reason": "shutdown"})
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
                        if (record.options.get("source", {}).get("type") == "rtsp"
                                and record.session_id not in self.hub.streams and "source_url" in record.extra):
                            await self._adopt_camera(record)
                    if not cursor:
                        break
            except STORE_ERRORS:
                pass  # the store is away; the next scan tries again
            except Exception:
                log.exception(kv("camera_takeover_failed"))

    async def _adopt_camera(self, record: SessionRecord) -> None:
        source = {**record.options["source"], "url": record.extra["source_url"]}
        try:
            camera = await rtsp.check_source(source, self.settings.rtsp_allow_private_addresses)
            loaded = await self.registry.load(record.model, record.weights)
            await rtsp.start_puller(self, record, loaded, camera)
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

    async def create(self, request: SessionCreate, source: str | None = None) -> tuple[SessionRecord, str, LoadedModel]:
        if await self.store.sessions.count() >= self.settings.max_sessions:
            raise ApiError(429, "too_many_sessions",
                           f"the server holds its maximum of {self.settings.max_sessions} sessions",
                           headers={"Retry-After": "5"})
        camera = None
        if request.source.type == "rtsp":  # a refused camera URL makes no session
            camera = await rtsp.check_source(request.source.model_dump(), self.settings.rtsp_allow_private_addresses)
        try:
            loaded = await self.registry.load(request.model, request.weights)
        except ApiError:
            raise
        except Exception as exc:
            log.exception(kv("model_load_failed", model=request.model, weights=request.weights))
            raise ApiError(503, "model_unavailable", f"model could not be loaded: {exc}") from None
        self.metrics.model_loaded(loaded.name)
        window = request.window
        backpressure = request.backpressure
        max_backlog = min(backpressure.max_backlog or self.settings.max_backlog, self.settings.max_backlog)
        options = {
            "source": request.source.model_dump(),
            "top_k": min(request.top_k, len(loaded.labels)),
            "min_score": request.min_score,
            "smoothing": request.smoothing,
            "window": {"policy": window.policy,
                       "frames": None if window.policy == "unbounded" else (window.frames or loaded.clip_frames)},
            "backpressure": {"policy": backpressure.policy or self.settings.drop_policy, "max_backlog": max_backlog},
        }
        extra: dict[str, Any] = {}
        if camera is not None:  # options are returned and logged: the URL's secrets stay in `extra`
            options["source"]["url"] = camera.redacted
            extra["source_url"] = camera.url
        idle_timeout = min(request.idle_timeout_s or self.settings.idle_timeout_s, self.settings.max_idle_timeout_s)
        token = secrets.token_urlsafe(24)
        now = time.time()
        record = SessionRecord(
            session_id="s_" + secrets.token_hex(8), token_hash=hash_token(token), model=loaded.name,
            weights=loaded.weights, options=options, created_at=now, idle_timeout_s=idle_timeout,
            last_active_at=now, extra=extra,
        )
        await self.store.sessions.create(record)
        if camera is not None:
            try:
                await rtsp.start_puller(self, record, loaded, camera)
            except BaseException:
                await self.store.delete_session(record.session_id)
                raise
        self.metrics.sessions_created.labels(source or request.source.type).inc()
        self.metrics.sessions_active.set(await self.store.sessions.count())
        log.info(kv("session_created", session_id=record.session_id, model=loaded.name, weights=loaded.weights,
                    options=json.dumps(options, separators=(",", ":"))))
        return record, token, loaded

    async def get(self, session_id: str) -> SessionRecord:
        record = await self.store.sessions.get(session_id)
        if record is None:
            raise ApiError(404, "session_not_found", f"no session {session_id!r} (never created, deleted or expired)")
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
            frames_dropped=record.frames_dropped, backlog=await self.store.frames.backlog(record.session_id),
            lag_ms=round(last.lag_ms, 2) if last else None,
            last_result=LastResult(seq=last.seq, pts=last.pts, frame_index=last.frame_index, labels=last.labels)
            if last else None,
            options=record.options,
            source=producer.status() if hasattr(producer, "status") else None,
        )

    async def delete(self, session_id: str, reason: str = "deleted") -> bool:
        if await self.store.sessions.get(session_id) is None:
            return False
        await self.hub.close_session(session_id, CloseCode.GONE, f"session {reason}",
                                     {"type": "error", "code": f"session_{reason}",
                                      "message": f"the session was {reason}"})
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
            self._keep_producer(session_id, owner), name=f"producer-{session_id}")
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

    async def _keep_producer(self, session_id: str, owner: str) -> None:
        while True:
            await asyncio.sleep(PRODUCER_TTL_MS / 3000.0)
            try:
                await self.store.sessions.claim_producer(session_id, owner, PRODUCER_TTL_MS)
            except STORE_ERRORS:
                pass

    async def touch(self, session_id: str) -> None:
        await self.store.sessions.touch(session_id, time.time())
