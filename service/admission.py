"""Who may open a session now: load-based admission, and a rate limit per client.

A new session is refused with ``503`` + ``Retry-After`` while the workers are saturated — their
frame lag (how long frames wait before their forward, smoothed) is above
``admission_max_lag_s``, or every worker holds its maximum of sessions — so that the sessions
already admitted keep their latency at twice the sustainable load, and ``/readyz`` says
``saturated`` meanwhile. ``POST /sessions`` is also rate-limited per client (API key, else
address) on each gateway: a token bucket of ``create_burst`` that refills at
``create_rate_per_min``; over it, ``429`` + ``Retry-After``.

In the embedded default the load is the in-process worker's; in a pool it is what the workers
publish with their heartbeats (:meth:`service.store.StreamLog.pool_load`), read at most once a
second.

Lag grows only once the load is past what the workers carry, and a session admitted now shows in it
seconds later: sessions arriving one after another would all be admitted while it builds. So once
the lag is past ``WARN_SHARE`` of the limit, new sessions are admitted one per
``admission_probe_s`` (the others get 503 ``saturated`` with ``Retry-After``): each one's load
shows before the next is let in.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from service.errors import ApiError
from service.settings import Settings
from service.store import STORE_ERRORS, Store, WorkerLoad

if TYPE_CHECKING:
    from service.worker.loop import InferenceLoop

POOL_LOAD_EVERY_S = 1.0
WARN_SHARE = 1 / 3  # of admission_max_lag_s: past it, sessions are admitted one at a time
MAX_CLIENTS_TRACKED = 10_000  # buckets kept; the oldest go first


class Admission:
    def __init__(self, settings: Settings, store: Store, inference: InferenceLoop | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.inference = inference
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._pool: list[WorkerLoad] = []
        self._pool_at = 0.0
        self._lag_s = 0.0  # the least lag of a worker that can take a session, at the last look
        self._probe_at = -math.inf

    def check_rate(self, client: str) -> None:
        """Spend one create from ``client``'s bucket, or raise 429."""
        rate = self.settings.create_rate_per_min / 60.0
        burst = float(self.settings.create_burst)
        now = self.clock()
        tokens, at = self._buckets.pop(client, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate) if rate > 0 else 60
            raise ApiError(429, "rate_limited", f"too many sessions created from this client; retry in {wait} s",
                           headers={"Retry-After": str(wait)})
        self._buckets[client] = (tokens - 1.0, now)
        while len(self._buckets) > MAX_CLIENTS_TRACKED:
            self._buckets.pop(next(iter(self._buckets)))

    async def saturated(self) -> str | None:
        """Why the workers cannot take another session now, or None."""
        limit = self.settings.admission_max_lag_s
        if self.inference is not None:  # this process's worker
            loads = [self.inference.load()]
        else:
            now = self.clock()
            if now - self._pool_at > POOL_LOAD_EVERY_S:
                self._pool_at = now
                try:
                    self._pool = await self.store.streams.pool_load()
                except STORE_ERRORS:
                    pass  # the store is away: the create fails on it anyway
            loads = self._pool
        if not loads:
            return None  # no worker has said anything yet (a pool starting): nothing to go by
        self._lag_s = min((load.lag_s for load in loads if load.held < load.max_sessions), default=0.0)
        if all(load.held >= load.max_sessions or load.lag_s > limit for load in loads):  # none can take one
            if all(load.held >= load.max_sessions for load in loads):
                return "every worker holds its maximum of sessions"
            lagging = [load.lag_s for load in loads if load.held < load.max_sessions]
            return f"frames wait {min(lagging):.1f} s for inference (limit {limit:g} s)"
        return None

    async def check_load(self) -> float | None:
        """Raise 503 ``saturated``, or take the probe slot near capacity: then what :meth:`give_back`
        needs when the create fails after all (a refused URL, a quota, an unknown model must not
        spend the one admission of the next few seconds)."""
        reason = await self.saturated()
        if reason is not None:
            raise ApiError(503, "saturated", f"the service is at capacity ({reason}); retry later",
                           headers={"Retry-After": "5"})
        limit, apart = self.settings.admission_max_lag_s, self.settings.admission_probe_s
        if apart and self._lag_s > limit * WARN_SHARE:  # near capacity: one new session at a time
            now = self.clock()
            if now - self._probe_at < apart:
                wait = math.ceil(apart - (now - self._probe_at))
                raise ApiError(503, "saturated", f"the service is near capacity (frames wait {self._lag_s:.2f} s "
                               f"for inference, limit {limit:g} s): one new session is admitted every "
                               f"{apart:g} s; retry in {wait} s", headers={"Retry-After": str(wait)})
            taken, self._probe_at = self._probe_at, now
            return taken
        return None

    def give_back(self, taken: float | None) -> None:
        """The create that took the probe slot failed: the next one may have it."""
        if taken is not None:
            self._probe_at = taken
