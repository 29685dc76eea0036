"""Error codes and WebSocket close codes: the ones documented in ``docs/service-api.md``."""

from __future__ import annotations

import re
from enum import IntEnum


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (1xxx from RFC 6455, 4xxx our own)."""

    NORMAL = 1000  # end of stream handled, or the client closed
    MESSAGE_TOO_BIG = 1009  # over the transport cap (4 x max_message_bytes); sent by the WS layer
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # server shutting down: reconnect (the session survives in Redis mode)
    TRY_AGAIN_LATER = 1013  # the state store (Redis) is unreachable: reconnect with backoff
    BAD_REQUEST = 4400  # bad query parameters
    UNAUTHORIZED = 4401  # no session token
    FORBIDDEN = 4403  # wrong session token
    NOT_FOUND = 4404  # unknown session
    CONFLICT = 4409  # another client already streams frames into this session
    GONE = 4410  # session deleted or expired while connected
    TOO_MANY = 4429  # too many labels watchers on this session


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class MediaError(Exception):
    """Bad input on a stream socket: reported as ``{"type": "error", ...}``; the session goes on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def shown(value: object, limit: int = 64) -> str:
    """A client's value quoted in a message: its repr, cut to ``limit`` characters (a message never
    echoes unbounded input)."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


_OBJECT_REPR = re.compile(r"<[^<>]{0,200}? at 0x[0-9a-fA-F]+>")
_ERRNO = re.compile(r"\[Errno -?\d+\]\s*")


def public_reason(exc: BaseException, limit: int = 200) -> str:
    """An exception's text fit for a client: no ``<object at 0x...>`` reprs, no ``[Errno N]``,
    at most ``limit`` characters."""
    text = _ERRNO.sub("", _OBJECT_REPR.sub("<object>", str(exc))).strip() or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"
