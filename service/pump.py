"""Labels out: a session's results from the store to one connection, in seq order.

A :class:`ResultPump` reads the result log rather than being handed results, so a slow client
only delays itself; one that falls behind more than the log's cap skips what was trimmed. Every
way labels leave the server uses it: the ``/stream`` and ``/labels`` sockets and the WebRTC data
channel (anything with ``send(message) -> bool``, ``close(code, reason, message)`` and a
``closed`` event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from service import messages
from service.errors import CloseCode
from service.logs import kv
from service.store import STORE_ERRORS, Store

log = logging.getLogger("service.pump")

SESSION_CHECK_EVERY_S = 2.0  # a pump with nothing to send checks that its session still exists


class Connection(Protocol):
    session_id: str
    closed: asyncio.Event

    async def send(self, message: dict[str, Any]) -> bool: ...
    async def close(self, code: int, reason: str = "", message: dict[str, Any] | None = None) -> None: ...


class ResultPump:
    def __init__(self, connection: Connection, store: Store, after_seq: int):
        self.connection = connection
        self.store = store
        self.sent_seq = after_seq
        self._progress = asyncio.Condition()

    async def run(self) -> None:
        try:
            await self._run()
        finally:  # wake an `eos` waiting for results: the socket is gone or the pump ended
            async with self._progress:
                self._progress.notify_all()

    async def _run(self) -> None:
        store = self.store
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
                    await self.connection.send(messages.error(
                        "store_unavailable", "the state store is unreachable; labels resume when it is back"))
                backoff = min(max(0.2, backoff * 2), 5.0)
                await asyncio.sleep(backoff)
                last_check = 0.0
                continue
            for result in batch:
                if not await self.connection.send(messages.result(result)):
                    return
                for event in result.events:  # action segments, committed with this frame's result
                    if not await self.connection.send(event):
                        return
                self.sent_seq = result.seq
            if batch:
                async with self._progress:
                    self._progress.notify_all()

    async def _lost(self) -> None:
        log.warning(kv("session_lost", session_id=self.connection.session_id, last_seq=self.sent_seq))
        await self.connection.close(
            CloseCode.GONE, "session lost",
            messages.error("session_lost", "the session is gone from the state store (deleted through another "
                           "gateway, expired, or the store restarted without persistence); create a new session",
                           last_seq=self.sent_seq))

    async def wait_sent(self, seq: int, timeout: float) -> bool:
        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.sent_seq >= seq or self.connection.closed.is_set())

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            return False
        return self.sent_seq >= seq


async def start_seq(store: Store, session_id: str, after_seq: int | None) -> int:
    """Where a new pump starts: after ``after_seq`` when the client asked, else after the last result."""
    if after_seq is not None:
        return after_seq
    last = await store.results.last(session_id)
    return last.seq if last else 0
