"""WebSocket routes: ``/sessions/{id}/stream`` (frames in, labels out) and ``/sessions/{id}/labels``.

The ``/stream`` socket hands binary messages to a :class:`~service.sources.websocket.WebSocketInput`
(the source side) and reads labels back through a :class:`~service.pump.ResultPump`.

The token is checked before anything of the session is touched; the socket is then accepted
only to deliver the documented close code (a close before accept would reach the client as a
bare HTTP 403). ``WebSocketDisconnect`` is normal flow.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service import messages
from service.api.bodies import strict_loads
from service.api.schemas import MIN_STREAM_FPS
from service.errors import ApiError, CloseCode, shown
from service.logs import kv
from service.pump import ResultPump, start_seq
from service.sessions import SessionService
from service.sources.websocket import WebSocketInput, valid_pts
from service.store import STORE_ERRORS, SessionRecord

log = logging.getLogger("service.api.sockets")
router = APIRouter()

MAX_CONTROL_BYTES = 64 * 1024


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
                    await self.websocket.close(code=int(code), reason=close_reason(reason))
        except (RuntimeError, OSError, WebSocketDisconnect):
            pass


SUBPROTOCOL = "movinet"  # what the server answers when a client offers it (with the token below)
TOKEN_SUBPROTOCOL = "bearer."  # ``bearer.TOKEN``: the token for a browser, which cannot set headers


def _offered(websocket: WebSocket) -> list[str]:
    return list(websocket.scope.get("subprotocols") or [])


def _token(websocket: WebSocket) -> str | None:
    """The session token: ``Authorization: Bearer``, the ``bearer.TOKEN`` subprotocol (browsers) or
    ``?token=`` (kept for old clients; redacted in every log line)."""
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer ") and header[7:].strip():
        return header[7:].strip()
    for offered in _offered(websocket):
        if offered.startswith(TOKEN_SUBPROTOCOL) and len(offered) > len(TOKEN_SUBPROTOCOL):
            return offered[len(TOKEN_SUBPROTOCOL):]
    return websocket.query_params.get("token") or None


async def _accept(websocket: WebSocket) -> None:
    """Accept, naming our subprotocol when the client offered it (a browser that offers
    subprotocols fails the handshake unless the answer names one of them)."""
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in _offered(websocket) else None)


def _after_seq(websocket: WebSocket) -> int | None:
    """``?after_seq=N`` (ASCII digits only); ValueError when it is something else."""
    after = websocket.query_params.get("after_seq")
    if after is None:
        return None
    if not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise ValueError(after)
    return int(after)


async def _refuse(websocket: WebSocket, code: int, error: str, message: str) -> None:
    await _accept(websocket)
    await websocket.send_text(json.dumps(messages.error(error, message)))
    await websocket.close(code=code, reason=close_reason(message))


def close_reason(text: str) -> str:
    """``text`` cut to what a close frame holds: 123 bytes of UTF-8 (RFC 6455), not characters, and
    never half a character (a longer reason broke the frame: no close code reached the client)."""
    return text.encode()[:123].decode(errors="ignore")


async def _authorise(websocket: WebSocket, service: SessionService, session_id: str) -> SessionRecord | None:
    """The session record, or None after refusing the socket with a close code."""
    if service.draining:
        await _refuse(websocket, CloseCode.SERVICE_RESTART, "draining", "server is shutting down")
        return None
    try:
        _after_seq(websocket)
    except ValueError:
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


@router.websocket("/sessions/{session_id}/stream")
async def stream(websocket: WebSocket, session_id: str) -> None:
    """Frames in (binary messages, JSON control messages), results out. See docs/service-api.md."""
    app = websocket.app
    service: SessionService = app.state.sessions
    settings = service.settings
    record = await _authorise(websocket, service, session_id)
    if record is None:
        return
    await _accept(websocket)
    connection = Connection(websocket, session_id, "stream")
    if not await service.attach_producer(session_id, connection):
        await connection.close(CloseCode.CONFLICT, "another client streams into this session",
                               messages.error("stream_in_use", "another client already streams frames into this "
                                              "session"))
        return
    metrics = service.metrics
    metrics.connections.labels("stream").inc()
    pump: ResultPump | None = None
    pump_task: asyncio.Task | None = None
    source: WebSocketInput | None = None
    close_code = CloseCode.NORMAL
    try:  # from here on, the finally gives the producer slot back whatever happens
        loaded = await service.registry.load(record.model, record.weights)

        async def report(code: str, message: str) -> None:
            await connection.send(messages.error(code, message))

        sink = service.sink(record, report)
        source = WebSocketInput(record, loaded, settings, sink, metrics, app.state.image_pool,
                                budget=service.decode_budget)
        pump = ResultPump(connection, service.store, await start_seq(service.store, session_id, _after_seq(websocket)))
        pump_task = asyncio.create_task(pump.run(), name=f"results-{session_id}")
        log.info(kv("stream_connected", session_id=session_id, after_seq=pump.sent_seq))
        await connection.send(messages.session(session_id, loaded.name, loaded.weights, pump.sent_seq,
                                               frame_rate=loaded.frame_rate, input_size=loaded.input_size,
                                               next_frame_index=sink.frame_index_base))
        await sink.touch(force=True)
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                close_code = message.get("code", CloseCode.NORMAL)
                break
            arrived_at = time.time()
            await sink.touch()
            data, text = message.get("bytes"), message.get("text")
            if data is not None:
                metrics.messages_received.labels("binary").inc()
                if len(data) > settings.max_message_bytes:
                    await sink.dropped(1, reason="too_large")
                    await report("message_too_large",
                                 f"message of {len(data)} bytes is over the limit of {settings.max_message_bytes}")
                    continue
                await source.on_binary(data, arrived_at)
            elif text is not None:
                metrics.messages_received.labels("text").inc()
                if await _control(text, source, connection, pump, report):
                    break
    except WebSocketDisconnect as exc:
        close_code = exc.code
    except STORE_ERRORS as exc:  # the store went away at the start: reconnect later (documented 1013)
        log.warning(kv("store_unavailable", session_id=session_id, error=repr(exc)))
        close_code = CloseCode.TRY_AGAIN_LATER
        await connection.close(CloseCode.TRY_AGAIN_LATER, "state store unavailable",
                               messages.error("store_unavailable", "the state store is unreachable; reconnect "
                                              "in a moment"))
    except Exception:
        log.exception(kv("stream_failed", session_id=session_id))
        await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
    finally:
        if source is not None:
            await _quietly(source.close())
        connection.closed.set()
        if pump_task is not None:
            pump_task.cancel()
        await service.detach_producer(session_id, connection)
        metrics.connections.labels("stream").dec()
        await _quietly(service.touch(session_id))
        log.info(kv("stream_disconnected", session_id=session_id, code=int(close_code),
                    last_seq=pump.sent_seq if pump else None))


async def _quietly(call: Awaitable[None]) -> None:
    try:
        await call
    except STORE_ERRORS:
        pass  # the store is away: the pump tells the client; the idle clock waits for it


def _parse_control(text: str) -> dict[str, Any] | None:
    """A control message: a JSON object with a ``type``, not too long nor too deep, no duplicate
    keys (:func:`~service.api.bodies.strict_loads`); None when it is JSON but not such an object."""
    if len(text) > MAX_CONTROL_BYTES:
        raise ValueError("control message too long")
    message = strict_loads(text, what="control message")
    if not isinstance(message, dict) or "type" not in message:
        return None
    return message


async def _control(text: str, source: WebSocketInput, connection: Connection, pump: ResultPump, report) -> bool:
    """Handle one JSON control message; True when the socket is done (end of stream)."""
    try:
        message = _parse_control(text)
    except ValueError as exc:
        await report("bad_message", str(exc) if "control message" in str(exc)
                     else 'control messages are JSON objects with a "type"')
        return False
    if message is None:
        await report("bad_message", 'control messages are JSON objects with a "type"')
        return False
    kind = message["type"]
    if kind == "frame":
        pts = valid_pts(message.get("pts"))
        if pts is None:
            await report("bad_message", '"frame" needs a "pts": a number of seconds, at most ten years')
        else:
            source.set_next_pts(pts)
    elif kind == "ping":
        await connection.send(messages.pong(message.get("t")))
    elif kind == "start":
        input_kind = message.get("input")
        frame_rate = message.get("frame_rate")
        if input_kind not in (None, "auto", "images", "video"):
            await report("bad_message", '"input" must be auto, images or video')
            return False
        if frame_rate is not None and (valid_pts(frame_rate) is None or not MIN_STREAM_FPS <= frame_rate <= 240):
            await report("bad_message", '"frame_rate" must be a number from 0.01 to 240')
            return False
        await source.start_stream(input_kind, frame_rate)
    elif kind == "eos":
        await source.end_stream()
        last_seq = source.sink.last_seq
        flushed = last_seq <= pump.sent_seq or await pump.wait_sent(last_seq, timeout=60.0)
        await connection.close(CloseCode.NORMAL, "end of stream", messages.eos(pump.sent_seq, flushed))
        return True
    else:
        await report("bad_message", f"unknown control message type {shown(kind, 40)}" if isinstance(kind, str)
                     else 'a control message\'s "type" is a string')
    return False


@router.websocket("/sessions/{session_id}/labels")
async def labels(websocket: WebSocket, session_id: str) -> None:
    """Labels only, for a second client such as a dashboard. Anything it sends is ignored."""
    service: SessionService = websocket.app.state.sessions
    record = await _authorise(websocket, service, session_id)
    if record is None:
        return
    await _accept(websocket)
    connection = Connection(websocket, session_id, "labels")
    if not service.hub.add_watcher(session_id, connection, service.settings.max_watchers_per_session):
        await connection.close(CloseCode.TOO_MANY, "too many watchers",
                               messages.error("too_many_watchers", "this session has its maximum of labels sockets"))
        return
    service.metrics.connections.labels("labels").inc()
    pump_task: asyncio.Task | None = None
    try:
        pump = ResultPump(connection, service.store, await start_seq(service.store, session_id, _after_seq(websocket)))
        pump_task = asyncio.create_task(pump.run(), name=f"labels-{session_id}")
        producer = service.hub.streams.get(session_id)
        fields = {"source": producer.status()} if hasattr(producer, "status") else {}  # RTSP puller, WebRTC peer
        await connection.send(messages.session(session_id, record.model, record.weights, pump.sent_seq, **fields))
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except WebSocketDisconnect:
        pass
    except STORE_ERRORS as exc:  # the store went away at the start: reconnect later (documented 1013)
        log.warning(kv("store_unavailable", session_id=session_id, error=repr(exc)))
        await connection.close(CloseCode.TRY_AGAIN_LATER, "state store unavailable",
                               messages.error("store_unavailable", "the state store is unreachable; reconnect "
                                              "in a moment"))
    finally:
        connection.closed.set()
        if pump_task is not None:
            pump_task.cancel()
        service.hub.remove_watcher(session_id, connection)
        service.metrics.connections.labels("labels").dec()
