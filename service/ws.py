"""WebSocket routes: ``/sessions/{id}/stream`` (frames in, labels out) and ``/sessions/{id}/labels``.

The token is checked before anything of the session is touched; the socket is then accepted
only to deliver the documented close code (a close before accept would reach the client as a
bare HTTP 403). ``WebSocketDisconnect`` is normal flow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.errors import ApiError, CloseCode
from service.ingest import StreamIngest
from service.logs import kv
from service.sessions import SessionService
from service.store import STORE_ERRORS, SessionRecord

log = logging.getLogger("service.ws")
router = APIRouter()

MAX_CONTROL_BYTES = 64 * 1024
TOUCH_EVERY_S = 1.0
SESSION_CHECK_EVERY_S = 2.0  # a results pump with nothing to send checks that its session still exists


class Connection:
    """One accepted socket: serialised sends, idempotent close."""

    def __init__(self, websocket: WebSocket, session_id: str, role: str):
        self.websocket = websocket
        self.session_id = session_id
        self.role = role
        self.closed = asyncio.Event()
        self._send_lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> bool:
        if self.closed.is_set():
            return False
        try:
            async with self._send_lock:
                await self.websocket.send_text(json.dumps(message, separators=(",", ":")))
            return True
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed.set()
            return False

    async def close(self, code: int, reason: str = "", message: dict[str, Any] | None = None) -> None:
        if self.closed.is_set():
            return
        if message is not None:
            await self.send(message)
        self.closed.set()
        try:
            async with self._send_lock:
                if self.websocket.application_state != WebSocketState.DISCONNECTED:
                    await self.websocket.close(code=int(code), reason=reason[:120])
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass


def _token(websocket: WebSocket) -> str | None:
    token = websocket.query_params.get("token")
    header = websocket.headers.get("authorization", "")
    if not token and header.lower().startswith("bearer "):
        token = header[7:].strip()
    return token or None


async def _refuse(websocket: WebSocket, code: int, error: str, message: str) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "error", "code": error, "message": message}))
    await websocket.close(code=code, reason=message[:120])


async def _authorise(websocket: WebSocket, service: SessionService, session_id: str) -> SessionRecord | None:
    """The session record, or None after refusing the socket with a close code."""
    if service.draining:
        await _refuse(websocket, CloseCode.SERVICE_RESTART, "draining", "server is shutting down")
        return None
    after = websocket.query_params.get("after_seq")
    if after is not None and not (after.isdigit()):
        await _refuse(websocket, CloseCode.BAD_REQUEST, "bad_request", "after_seq must be an integer >= 0")
        return None
    try:
        record = await service.get(session_id)
        service.check_token(record, _token(websocket))
    except STORE_ERRORS as exc:
        log.warning(kv("ws_refused", session_id=session_id, code=int(CloseCode.TRY_AGAIN_LATER), error=repr(exc)))
        await _refuse(websocket, CloseCode.TRY_AGAIN_LATER, "store_unavailable",
                      "the state store is unreachable; reconnect in a moment")
        return None
    except ApiError as exc:
        code = {404: CloseCode.NOT_FOUND, 401: CloseCode.UNAUTHORIZED, 403: CloseCode.FORBIDDEN}[exc.status]
        log.info(kv("ws_refused", session_id=session_id, code=int(code), reason=exc.code))
        await _refuse(websocket, code, exc.code, exc.message)
        return None
    return record


class ResultPump:
    """Sends a session's results to one socket, in seq order, from ``after_seq`` on.

    It reads the result log rather than being handed results, so a slow client only delays
    itself; one that falls behind more than the log's cap skips what was trimmed.
    """

    def __init__(self, connection: Connection, service: SessionService, after_seq: int):
        self.connection = connection
        self.service = service
        self.sent_seq = after_seq
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        try:
            await self._run()
        finally:  # wake an `eos` waiting for results: the socket is gone or the pump ended
            async with self._progress:
                self._progress.notify_all()

    async def _run(self) -> None:
        store = self.service.store
        session_id = self.connection.session_id
        backoff, reported, last_check = 0.0, False, time.monotonic()
        while not self.connection.closed.is_set():
            try:
                batch = await store.results.read_after(session_id, self.sent_seq, limit=64, timeout=2.0)
                if not batch and time.monotonic() - last_check > SESSION_CHECK_EVERY_S:
                    last_check = time.monotonic()
                    if await store.sessions.get(session_id) is None:
                        await self._lost()
                        return
                backoff, reported = 0.0, False
            except STORE_ERRORS as exc:
                # Redis is away: say so once, keep the socket, retry with backoff; when it is back
                # the session is either there (go on) or lost (a restart without persistence).
                if not reported:
                    reported = True
                    log.warning(kv("store_unavailable", session_id=session_id, error=repr(exc)))
                    await self.connection.send({"type": "error", "code": "store_unavailable",
                                                "message": "the state store is unreachable; labels resume when "
                                                "it is back"})
                backoff = min(max(0.2, backoff * 2), 5.0)
                await asyncio.sleep(backoff)
                last_check = 0.0
                continue
            for result in batch:
                if not await self.connection.send(result.to_message()):
                    return
                self.sent_seq = result.seq
            if batch:
                async with self._progress:
                    self._progress.notify_all()

    async def _lost(self) -> None:
        log.warning(kv("session_lost", session_id=self.connection.session_id, last_seq=self.sent_seq))
        await self.connection.close(
            CloseCode.GONE, "session lost",
            {"type": "error", "code": "session_lost", "last_seq": self.sent_seq,
             "message": "the session is gone from the state store (deleted through another gateway, expired, "
                        "or the store restarted without persistence); create a new session"})

    async def wait_sent(self, seq: int, timeout: float) -> bool:
        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.sent_seq >= seq or self.connection.closed.is_set())

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return self.sent_seq >= seq


async def _start_seq(websocket: WebSocket, service: SessionService, session_id: str) -> int:
    after = websocket.query_params.get("after_seq")
    if after is not None:
        return int(after)
    last = await service.store.results.last(session_id)
    return last.seq if last else 0


@router.websocket("/sessions/{session_id}/stream")
async def stream(websocket: WebSocket, session_id: str) -> None:
    """Frames in (binary messages, JSON control messages), results out. See docs/service-api.md."""
    app = websocket.app
    service: SessionService = app.state.sessions
    settings = service.settings
    record = await _authorise(websocket, service, session_id)
    if record is None:
        return
    await websocket.accept()
    connection = Connection(websocket, session_id, "stream")
    if not await service.attach_producer(session_id, connection):
        await connection.close(CloseCode.CONFLICT, "another client streams into this session",
                               {"type": "error", "code": "stream_in_use",
                                "message": "another client already streams frames into this session"})
        return
    metrics = service.metrics
    metrics.connections.labels("stream").inc()
    loaded = service.registry.get_loaded(f"{record.model}:{record.weights}") or await service.registry.load(
        record.model, record.weights)

    async def report(code: str, message: str) -> None:
        await connection.send({"type": "error", "code": code, "message": message})

    ingest = StreamIngest(record, loaded, settings, service.store, metrics, app.state.image_pool, report)
    pump = ResultPump(connection, service, await _start_seq(websocket, service, session_id))
    pump_task = asyncio.create_task(pump.run(), name=f"results-{session_id}")
    log.info(kv("stream_connected", session_id=session_id, after_seq=pump.sent_seq))
    await connection.send({"type": "session", "session_id": session_id, "model": loaded.name,
                           "weights": loaded.weights, "frame_rate": loaded.frame_rate,
                           "input_size": loaded.input_size, "after_seq": pump.sent_seq,
                           "next_frame_index": ingest.frame_index_base})
    await _touch(service, session_id)
    last_touch = time.monotonic()
    close_code = CloseCode.NORMAL
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                close_code = message.get("code", CloseCode.NORMAL)
                break
            arrived_at = time.time()
            if time.monotonic() - last_touch > TOUCH_EVERY_S:
                last_touch = time.monotonic()
                await _touch(service, session_id)
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                metrics.messages_received.labels("binary").inc()
                if len(data) > settings.max_message_bytes:
                    metrics.frames_dropped.labels("too_large").inc()
                    await service.store.sessions.add_counters(session_id, frames_dropped=1)
                    await report("message_too_large",
                                 f"message of {len(data)} bytes is over the limit of {settings.max_message_bytes}")
                    continue
                await ingest.on_binary(data, arrived_at)
            elif text is not None:
                metrics.messages_received.labels("text").inc()
                if await _control(text, ingest, connection, pump, report):
                    break
    except WebSocketDisconnect as exc:
        close_code = exc.code
    except Exception:
        log.exception(kv("stream_failed", session_id=session_id))
        await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        await ingest.close()
        connection.closed.set()
        pump_task.cancel()
        await service.detach_producer(session_id, connection)
        metrics.connections.labels("stream").dec()
        await _touch(service, session_id)
        log.info(kv("stream_disconnected", session_id=session_id, code=int(close_code), last_seq=pump.sent_seq))


async def _touch(service: SessionService, session_id: str) -> None:
    try:
        await service.touch(session_id)
    except STORE_ERRORS:
        pass  # the store is away: the pump tells the client; the idle clock waits for it


async def _control(text: str, ingest: StreamIngest, connection: Connection, pump: ResultPump, report) -> bool:
    """Handle one JSON control message; True when the socket is done (end of stream)."""
    if len(text) > MAX_CONTROL_BYTES:
        await report("bad_message", "control message too long")
        return False
    try:
        message = json.loads(text)
        kind = message["type"]
    except (ValueError, KeyError, TypeError):
        await report("bad_message", 'control messages are JSON objects with a "type"')
        return False
    if kind == "frame":
        pts = message.get("pts")
        if not isinstance(pts, int | float) or isinstance(pts, bool):
            await report("bad_message", '"frame" needs a numeric "pts" (seconds)')
        else:
            ingest.set_next_pts(float(pts))
    elif kind == "ping":
        await connection.send({"type": "pong", "t": message.get("t")})
    elif kind == "start":
        input_kind = message.get("input")
        if input_kind not in (None, "auto", "images", "video"):
            await report("bad_message", '"input" must be auto, images or video')
            return False
        await ingest.start_stream(input_kind, message.get("frame_rate"))
    elif kind == "eos":
        await ingest.end_stream()
        flushed = ingest.last_seq <= pump.sent_seq or await pump.wait_sent(ingest.last_seq, timeout=60.0)
        await connection.close(CloseCode.NORMAL, "end of stream",
                               {"type": "eos", "last_seq": pump.sent_seq, "complete": flushed})
        return True
    else:
        await report("bad_message", f"unknown control message type {kind!r}")
    return False


@router.websocket("/sessions/{session_id}/labels")
async def labels(websocket: WebSocket, session_id: str) -> None:
    """Labels only, for a second client such as a dashboard. Anything it sends is ignored."""
    service: SessionService = websocket.app.state.sessions
    record = await _authorise(websocket, service, session_id)
    if record is None:
        return
    await websocket.accept()
    connection = Connection(websocket, session_id, "labels")
    if not service.hub.add_watcher(session_id, connection, service.settings.max_watchers_per_session):
        await connection.close(CloseCode.TOO_MANY, "too many watchers",
                               {"type": "error", "code": "too_many_watchers",
                                "message": "this session has its maximum of labels sockets"})
        return
    service.metrics.connections.labels("labels").inc()
    pump = ResultPump(connection, service, await _start_seq(websocket, service, session_id))
    pump_task = asyncio.create_task(pump.run(), name=f"labels-{session_id}")
    greeting = {"type": "session", "session_id": session_id, "model": record.model, "weights": record.weights,
                "after_seq": pump.sent_seq}
    producer = service.hub.streams.get(session_id)
    if hasattr(producer, "status"):  # an RTSP puller or WebRTC peer: where it stands now
        greeting["source"] = producer.status()
    await connection.send(greeting)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except WebSocketDisconnect:
        pass
    finally:
        connection.closed.set()
        pump_task.cancel()
        service.hub.remove_watcher(session_id, connection)
        service.metrics.connections.labels("labels").dec()
