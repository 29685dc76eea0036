"""A session's ingest side on the in-memory store, without a server (for unit tests)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

from service.metrics import Metrics
from service.options import BackpressureOptions, SessionOptions, SourceOptions
from service.sources.ingest import FrameSink
from service.store import SessionRecord, Store
from service.store.memory import memory_store


def record(session_id: str = "s_test", keep: int = 64, **source: object) -> SessionRecord:
    now = time.time()
    options = SessionOptions(source=SourceOptions(**source), backpressure=BackpressureOptions(max_backlog=keep))
    return SessionRecord(session_id=session_id, token_hash="h", model="m", weights="w", options=options,
                         created_at=now, idle_timeout_s=60.0, last_active_at=now)


@contextlib.asynccontextmanager
async def pipeline(keep: int = 64, store: Store | None = None,
                   metrics: Metrics | None = None) -> AsyncIterator[tuple[FrameSink, Store, list[tuple[str, str]]]]:
    """``(sink, store, reports)``: a FrameSink of a fresh session; ``reports`` collects what the
    client would be told (``(code, message)``)."""
    store = store or memory_store()
    session = record(keep=keep)
    await store.sessions.create(session)
    reports: list[tuple[str, str]] = []

    async def report(code: str, message: str) -> None:
        reports.append((code, message))

    async def touch(session_id: str) -> None:
        await store.sessions.touch(session_id, time.time())

    yield FrameSink(session, store, metrics or Metrics(), report, touch=touch), store, reports
