"""Bounds on what a client can make the server read, hold or wait for, below the routes.

* :class:`BodyLimit` (ASGI middleware): a request body over ``max_body_bytes`` (the WebRTC offer
  route: ``max_offer_body_bytes``) gets ``413 body_too_large`` — by ``Content-Length`` before a
  byte of it is read, or, for a chunked body, as soon as the chunks counted pass the limit.
* :class:`GuardedHttpToolsProtocol` (uvicorn's httptools protocol with limits it lacks): a
  connection must send a whole request head within ``http_head_timeout_s`` (a silent connection
  or half a request line gets ``408`` and is closed); a request target over
  :data:`MAX_TARGET_BYTES` gets ``414``; more than :data:`MAX_HEADER_LINE_BYTES` in one header,
  :data:`MAX_HEADERS` headers or :data:`MAX_HEAD_BYTES` in all gets ``431``. These refusals are
  written before the WebSocket layer sees the request (its own limits fail without an answer)
  and the connection lingers until the client has read them (an immediate close with unread
  input would reset the connection and lose the response).

Every refusal is ``{"error": {"code", "message"}}`` with ``Connection: close``; none echoes input.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.logs import kv

log = logging.getLogger("service.api.limits")

MAX_TARGET_BYTES = 8000  # under the WebSocket layer's 8192-byte request line
MAX_HEADER_LINE_BYTES = 8000  # under its 8192-byte header line
MAX_HEADERS = 100  # under its 128 headers
MAX_HEAD_BYTES = 32 * 1024  # request line and headers together (nginx's default buffers)
LINGER_S = 2.0  # after a refusal: how long the client has to read it before the socket closes

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


class BodyLimit:
    """Refuses request bodies over a limit with 413, without reading (or echoing) them."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_body_bytes: int,
                 max_offer_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_offer_body_bytes = max_offer_body_bytes

    def limit(self, scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path", "").endswith("/webrtc"):
            return max(self.max_body_bytes, self.max_offer_body_bytes)
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _refuse(send, limit)
                    return {"type": "http.disconnect"}  # the app stops reading; what it sends is dropped
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # The app failed on the body it did not get: the client already has its 413.


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP parser refuses it before we get here
    return None


async def _refuse(send: Send, limit: int) -> None:
    body = error_body("body_too_large", f"the request body is over the limit of {limit} bytes")
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 414: b"URI Too Long", 431: b"Request Header Fields Too Large"}


class _HeadRefused(Exception):
    """Raised from a parser callback to stop parsing; httptools re-raises it as a parser error."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline and size limits on each request head.

    uvicorn arms its keep-alive timer only after a response, so without this a connection that
    sends nothing (or a few bytes of a request line) stays open for ever, and httptools buffers a
    request line or header of any size.
    """

    def __init__(self, *args: Any, head_timeout_s: float = 10.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False  # between a request's complete head and its response's end
        self._head_bytes = 0  # bytes received since the current head began
        self._header_bytes = 0
        self._headers = 0
        self._refusal: tuple[int, str, str] | None = None
        self._refused = False

    # --- the head deadline --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_request and not self.transport.is_closing():
            self._respond(408, "request_timeout", f"no complete request head within {self.head_timeout_s:g} s")

    # --- sizes ---------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: the rest is discarded unread
        if not self._in_request:
            self._arm_head_timer()  # the first bytes of the next head, after a keep-alive pause
            self._head_bytes += len(data)
        super().data_received(data)
        # Still no complete head after this chunk: everything since it began is head.
        if not self._refused and not self._in_request and self._head_bytes > MAX_HEAD_BYTES:
            self._respond(431, "headers_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._headers = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > MAX_TARGET_BYTES:
            self._stop(414, "uri_too_long", f"the request target is over {MAX_TARGET_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._headers += 1
        self._header_bytes += len(name) + len(value) + 4
        if len(name) + len(value) + 2 > MAX_HEADER_LINE_BYTES:
            self._stop(431, "headers_too_large", f"a header line is over {MAX_HEADER_LINE_BYTES} bytes")
        if self._headers > MAX_HEADERS:
            self._stop(431, "headers_too_large", f"more than {MAX_HEADERS} headers")
        if self._header_bytes + len(self.url) > MAX_HEAD_BYTES:
            self._stop(431, "headers_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_request = True
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._in_request = False
        self._head_bytes = 0
        super().on_response_complete()

    def _stop(self, status: int, code: str, message: str) -> None:
        self._refusal = (status, code, message)
        raise _HeadRefused(message)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers every parser error with a 400; one raised by _stop gets its own answer.
        if self._refusal is not None:
            self._respond(*self._refusal)
        else:  # uvicorn's own is plain text: a JSON error as every other refusal
            self._respond(400, "bad_request", "not a valid HTTP/1.1 request (request line, a header, or the body's "
                          "framing)")

    def _respond(self, status: int, code: str, message: str) -> None:
        """Write a refusal, stop reading requests, and close once the client has had time to read it."""
        self._refused = True
        self._cancel_head_timer()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        log.info(kv("http_refused", status=status, code=code, client=client))
        body = error_body(code, message)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error"))]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)

    def eof_received(self) -> bool | None:
        return None  # the client closed its side: close ours (after what is written is sent)


def guarded_protocol(head_timeout_s: float) -> type[asyncio.Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with this head deadline."""

    class Guarded(GuardedHttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, head_timeout_s=head_timeout_s, **kwargs)

    return Guarded
