"""The connections open on this gateway, per session: its one frame producer and its watchers.

Deleting or expiring a session, or shutting down, closes them through the hub with a documented
code; RTSP source events reach the session's labels sockets through :meth:`ConnectionHub.broadcast`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol


class Closable(Protocol):
    async def close(self, code: int, reason: str, message: dict[str, Any] | None = None) -> None: ...


class ConnectionHub:
    """The sockets open on this gateway, per session: one frame producer, some watchers."""

    def __init__(self) -> None:
        self.streams: dict[str, Closable] = {}
        self.watchers: dict[str, set[Closable]] = {}

    def attach_stream(self, session_id: str, connection: Closable) -> bool:
        if session_id in self.streams:
            return False
        self.streams[session_id] = connection
        return True

    def detach_stream(self, session_id: str, connection: Closable) -> None:
        if self.streams.get(session_id) is connection:
            del self.streams[session_id]

    def add_watcher(self, session_id: str, connection: Closable, limit: int) -> bool:
        watchers = self.watchers.setdefault(session_id, set())
        if len(watchers) >= limit:
            return False
        watchers.add(connection)
        return True

    def remove_watcher(self, session_id: str, connection: Closable) -> None:
        watchers = self.watchers.get(session_id)
        if watchers is not None:
            watchers.discard(connection)
            if not watchers:
                del self.watchers[session_id]

    def connections(self, session_id: str | None = None) -> list[Closable]:
        ids = [session_id] if session_id else list({*self.streams, *self.watchers})
        found: list[Closable] = []
        for sid in ids:
            if sid in self.streams:
                found.append(self.streams[sid])
            found.extend(self.watchers.get(sid, ()))
        return found

    async def close_session(self, session_id: str, code: int, reason: str, message: dict | None = None) -> None:
        await asyncio.gather(*(c.close(code, reason, message) for c in self.connections(session_id)),
                             return_exceptions=True)

    async def broadcast(self, session_id: str, message: dict[str, Any]) -> None:
        """A message to the session's labels sockets (source events of an RTSP puller, say)."""
        await asyncio.gather(*(w.send(message) for w in list(self.watchers.get(session_id, ()))),
                             return_exceptions=True)

    async def close_all(self, code: int, reason: str, message: dict | None = None) -> None:
        await asyncio.gather(*(c.close(code, reason, message) for c in self.connections()),
                             return_exceptions=True)
