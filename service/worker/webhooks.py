"""Action events POSTed to a session's webhook, by the worker that committed them.

``{"events": {"webhook_url": "https://..."}}`` in ``POST /sessions`` (checked like a camera URL:
http(s) only, every address it resolves to public unless private addresses are allowed; at each
send resolved and checked again, and the POST pinned to the address checked). After
a commit, the worker hands that frame's events to a :class:`WebhookSender`: a bounded queue (the
oldest batch goes when it is full, counted) and one task that POSTs
``{"session_id", "events": [...]}`` as JSON, with retries and backoff on errors and 5xx. Delivery
is at least once across worker crashes only as far as the events were committed: a worker that
dies with batches queued loses them (the events stay in ``GET /sessions/{id}/events``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import httpx

from service.logs import kv
from service.metrics import Metrics
from service.sources.urls import WEBHOOK_SCHEMES, RtspUrl, SourceRefused, parse_url, pin

log = logging.getLogger("service.worker.webhooks")

QUEUE_BATCHES = 1000
RETRIES = 3
TIMEOUT_S = 5.0


class WebhookSender:
    def __init__(self, metrics: Metrics, allow_private: bool) -> None:
        self.metrics = metrics
        self.allow_private = allow_private
        self._queue: deque[tuple[str, str, list[dict[str, Any]]]] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0
        self.sent = 0

    def send(self, session_id: str, url: str, events: list[dict[str, Any]]) -> None:
        if len(self._queue) >= QUEUE_BATCHES:
            self._queue.popleft()
            self.dropped += 1
            self.metrics.webhooks.labels("dropped").inc()
        self._queue.append((session_id, url, events))
        self._ready.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as client:
            while True:
                if not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                session_id, url, events = self._queue.popleft()
                await self._post(client, session_id, url, events)

    async def _post(self, client: httpx.AsyncClient, session_id: str, url: str, events: list[dict[str, Any]]) -> None:
        delay = 0.5
        for attempt in range(1, RETRIES + 1):
            try:
                # Checked again at send time (the name may resolve elsewhere than at creation), and
                # the POST goes to the address checked: httpx never looks the name up itself.
                target = parse_url(url, WEBHOOK_SCHEMES)
                address = await asyncio.get_running_loop().run_in_executor(None, pin, target, self.allow_private)
                response = await post_pinned(client, target, address, {"session_id": session_id, "events": events})
                if response.status_code < 500:
                    self.sent += 1
                    self.metrics.webhooks.labels("sent" if response.status_code < 400 else "refused").inc()
                    return
                reason = f"HTTP {response.status_code}"
            except SourceRefused as exc:
                self.metrics.webhooks.labels("refused").inc()
                log.warning(kv("webhook_refused", session_id=session_id, code=exc.code))
                return
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt < RETRIES:
                await asyncio.sleep(delay)
                delay *= 2
        self.metrics.webhooks.labels("failed").inc()
        log.warning(kv("webhook_failed", session_id=session_id, reason=reason, attempts=RETRIES))


async def post_pinned(client: httpx.AsyncClient, target: RtspUrl, address: str, body: Any) -> httpx.Response:
    """POST ``body`` to ``target`` on the connection to ``address``: the URL names the address, the
    ``Host`` header and (https) the TLS server name — SNI and the certificate check — the host."""
    default_port = WEBHOOK_SCHEMES[target.scheme]
    literal = f"[{target.host}]" if ":" in target.host else target.host
    host = literal if target.port == default_port else f"{literal}:{target.port}"
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return await client.post(target.with_host(address), json=body, headers={"Host": host}, extensions=extensions)
