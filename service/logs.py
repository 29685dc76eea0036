"""Structured ``key=value`` logging; every line about a session carries ``session_id``.

Secrets never reach a log line: :class:`RedactSecrets` (installed by :func:`setup_logging` on our
handler and on uvicorn's loggers) replaces the values of secret-looking query parameters
(``?token=``, ``api_key=``, ``password=``, ...), bearer credentials (``Authorization: Bearer``,
the ``bearer.TOKEN`` WebSocket subprotocol) and ``X-API-Key`` values with ``***`` in every
record: uvicorn's access lines (``GET /sessions/s_1?token=***``), its WebSocket lines and its
trace output (which prints whole ASGI scopes, headers included) as much as our own.
"""

from __future__ import annotations

import logging
import re
import sys
from urllib.parse import unquote_plus

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@")

# A query parameter (in a URL, a raw query string or a scope's repr): its name and its value.
_PARAM = re.compile(r"(?P<lead>^|[?&;\s'\"(])(?P<name>[\w.%+\-\[\]]{1,64})=(?P<value>[^&;\s'\"#)]*)")
_SECRET_NAME = re.compile(r"(?i)token|key|secret|pass|pwd|auth|sig|cred")
_COUNTER = re.compile(r"^\d{1,12}$")  # a lease's fencing token (token=7) is a counter, not a secret
_BEARER = re.compile(r"(?i)(\bbearer(?:\s+|\.))([A-Za-z0-9._~+/=\-]+)")
_API_KEY_HEADER = re.compile(r"(?i)(x-api-key['\"]?\s*[:,]\s*b?['\"]?)([^'\"\s,)]+)")
REDACTED = "***"


def redact(text: str) -> str:
    """``text`` with secret-looking query values, bearer credentials and API keys as ``***``."""
    if "=" in text:
        def hide(match: re.Match) -> str:
            value = match.group("value")
            if value and not _COUNTER.match(value) and _SECRET_NAME.search(unquote_plus(match.group("name"))):
                return f"{match.group('lead')}{match.group('name')}={REDACTED}"
            return match.group(0)

        text = _PARAM.sub(hide, text)
    text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
    return _API_KEY_HEADER.sub(lambda m: m.group(1) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """Rewrites a record so that no formatter can print a secret; never drops a record.

    The arguments are redacted one by one where that suffices (uvicorn's access formatter needs
    its five arguments); otherwise the message is formatted and redacted as a whole.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to the formatter's own error path
            return True
        if redact(message) != message:
            if isinstance(record.args, tuple):
                record.msg = redact(record.msg) if isinstance(record.msg, str) else record.msg
                record.args = tuple(redact(a) if isinstance(a, str) else _redact_value(a) for a in record.args)
            try:
                still = record.getMessage()
            except Exception:
                still = None
            if still is None or redact(still) != still:
                record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def _redact_value(value: object) -> object:
    """A non-string argument whose text holds a secret (a scope dict, bytes) becomes its redacted text."""
    if isinstance(value, int | float | bool) or value is None:
        return value
    text = str(value)
    return redact(text) if redact(text) != text else value


def _format_value(value: object) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if text and all(ch in _SAFE for ch in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def kv(event: str, **fields: object) -> str:
    """``kv("frame_dropped", session_id="s1", reason="backpressure")`` → ``event=frame_dropped ...``."""
    parts = [f"event={event}"]
    parts += [f"{key}={_format_value(value)}" for key, value in fields.items() if value is not None]
    return " ".join(parts)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d} "
            f"level={record.levelname.lower()} logger={record.name} {record.getMessage()}"
        )
        if record.exc_info or record.exc_text:
            line += " exc=" + _format_value(record.exc_text or self.formatException(record.exc_info))
        return line


LOGGERS = ("service", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
TRACE = 5


def install_redaction() -> None:
    """:class:`RedactSecrets` on the service's and uvicorn's loggers and on every handler they have
    (a logger's filter sees only records logged to that very logger; a handler's sees the
    records its children propagate too). Idempotent; call it again after a logging config."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):
            if not any(isinstance(f, RedactSecrets) for f in target.filters):
                target.addFilter(RedactSecrets())


def setup_logging(level: str = "info") -> None:
    """Our format for the service's loggers and uvicorn's (run uvicorn with ``log_config=None``)."""
    logging.addLevelName(TRACE, "TRACE")  # uvicorn's level below debug (it prints ASGI messages)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("service", "uvicorn") else []
        logger.setLevel(level.upper())
        logger.propagate = name not in ("service", "uvicorn")
    install_redaction()
