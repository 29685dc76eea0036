"""How the Redis store writes its records: session hash fields, frame and result stream entries.

Pure functions, no I/O: :mod:`service.store.redis` and :mod:`service.store.redis_sessions` use
them, so a record reads back the same way wherever it was written, and one bad record reads as
None (logged) instead of breaking a listing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from typing import Any

from service.options import SessionOptions
from service.store import Frame, Result, SessionRecord, keys

log = logging.getLogger("service.store.redis")

_INT_FIELDS = {"frames_received", "frames_processed", "frames_dropped", "next_frame_index"}
_FLOAT_FIELDS = {"created_at", "idle_timeout_s", "last_active_at", "unused_timeout_s"}
_JSON_FIELDS = {"options", "extra"}
_RECORD_FIELDS = {f.name for f in fields(SessionRecord)}


def session_keys(session_id: str) -> list[str]:
    return [keys.session(session_id), keys.frames(session_id), keys.results(session_id),
            keys.checkpoint(session_id), keys.events(session_id), keys.lease(session_id), keys.producer(session_id)]


def encode_field(name: str, value: Any) -> str:
    if name == "options":
        return json.dumps(value.to_dict(), separators=(",", ":"))
    if name in _JSON_FIELDS:
        return json.dumps(value, separators=(",", ":"))
    if name in _FLOAT_FIELDS:
        return repr(float(value))
    return str(value)


def decode_record(raw: dict[bytes, bytes]) -> SessionRecord | None:
    """The record, or None when there is none — or it cannot be read: one bad record must not
    break a listing or a scan (it is logged and left to expire)."""
    if not raw or b"token_hash" not in raw:
        return None
    try:
        return _parse_record(raw)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        log.warning("event=session_record_unreadable session_id=%s error=%r",
                    raw.get(b"session_id", b"?").decode(errors="replace")[:64], exc)
        return None


def _parse_record(raw: dict[bytes, bytes]) -> SessionRecord:
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode()
        if name not in _RECORD_FIELDS:
            continue
        text = value.decode()
        if name == "options":
            values[name] = SessionOptions.from_dict(json.loads(text))
        elif name in _JSON_FIELDS:
            values[name] = json.loads(text)
        elif name in _INT_FIELDS:
            values[name] = int(text)
        elif name in _FLOAT_FIELDS:
            values[name] = float(text)
        else:
            values[name] = text
    return SessionRecord(**values)


def entry_seq(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def frame_from_entry(entry_id: bytes, data: dict[bytes, bytes]) -> Frame:
    pts = data[b"pts"]
    return Frame(pts=None if pts == b"" else float(pts), frame_index=int(data[b"fi"]),
                 received_at=float(data[b"t"]), height=int(data[b"h"]), width=int(data[b"w"]),
                 data=data[b"data"], seq=entry_seq(entry_id), codec=data.get(b"c", b"raw").decode())


def result_from_entry(entry_id: bytes, data: dict[bytes, bytes]) -> Result:
    body = json.loads(data[b"r"])
    return Result(seq=entry_seq(entry_id), pts=body["pts"], frame_index=body["frame_index"], labels=body["labels"],
                  lag_ms=body["lag_ms"], dropped=int(data.get(b"d", b"0")), produced_at=body["produced_at"],
                  error=body.get("error"), events=body.get("events", []))


def result_payload(result: Result) -> str:
    body = {"pts": result.pts, "frame_index": result.frame_index, "labels": result.labels,
            "lag_ms": result.lag_ms, "produced_at": result.produced_at, "error": result.error}
    if result.events:
        body["events"] = result.events
    return json.dumps(body, separators=(",", ":"))
