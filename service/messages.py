"""Every message the server sends to a client, built in one place (docs/service-api.md).

Sockets, the WebRTC data channel and the result pump send these dictionaries as JSON text;
nothing else builds a client message by hand, so the documented shapes have one source.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.store import Result


def result(item: Result) -> dict[str, Any]:
    """One model frame's labels: ``{"type": "result", "seq", "pts", "frame_index", "labels", ...}``."""
    message: dict[str, Any] = {
        "type": "result",
        "seq": item.seq,
        "pts": item.pts,
        "frame_index": item.frame_index,
        "labels": item.labels,
        "lag_ms": round(item.lag_ms, 2),
        "dropped": item.dropped,
    }
    if item.error:
        message["error"] = item.error
    return message


def error(code: str, message: str, **fields: Any) -> dict[str, Any]:
    """Bad input or a state the client should know of; the session goes on unless a close follows."""
    return {"type": "error", "code": code, "message": message, **fields}


def session(session_id: str, model: str, weights: str, after_seq: int, **fields: Any) -> dict[str, Any]:
    """The greeting on every socket: what the session runs and where its labels resume."""
    return {"type": "session", "session_id": session_id, "model": model, "weights": weights,
            "after_seq": after_seq, **fields}


def eos(last_seq: int, complete: bool) -> dict[str, Any]:
    """The answer to ``{"type": "eos"}``: every label up to ``last_seq`` was sent (``complete``)."""
    return {"type": "eos", "last_seq": last_seq, "complete": complete}


def pong(t: Any) -> dict[str, Any]:
    """The answer to a ping; ``t`` comes back as sent when it is a finite number or a short string."""
    if isinstance(t, bool) or not (isinstance(t, int | float | str) or t is None):
        t = None
    elif isinstance(t, float) and not math.isfinite(t):
        t = None
    elif isinstance(t, int) and abs(t) > 2**53:
        t = None
    elif isinstance(t, str):
        t = t[:64]
    return {"type": "pong", "t": t}


def source(kind: str, state: str, reconnects: int, **fields: Any) -> dict[str, Any]:
    """A server-side source (RTSP puller) changed state."""
    return {"type": "source", "source": kind, "state": state, "reconnects": reconnects, **fields}


def closing(reason: str) -> dict[str, Any]:
    """Sent before the server closes every socket (shutdown)."""
    return {"type": "closing", "reason": reason}
