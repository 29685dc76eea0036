"""Structured ``key=value`` logging; every line about a session carries ``session_id``."""

from __future__ import annotations

import logging
import sys

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:/@")


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
        if record.exc_info:
            line += " exc=" + _format_value(self.formatException(record.exc_info))
        return line


def setup_logging(level: str = "info") -> None:
    """Our format for the service's loggers and uvicorn's (run uvicorn with ``log_config=None``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    for name in ("service", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name in ("service", "uvicorn") else []
        logger.setLevel(level.upper())
        logger.propagate = name not in ("service", "uvicorn")
