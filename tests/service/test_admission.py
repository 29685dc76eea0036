"""Admission control: the create rate per client, and new sessions refused while the worker is
saturated (its frames wait too long), with ``/readyz`` following — on a real server."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.service.conftest import TEST_MODEL, jpeg, moving_frames, run_server, stream_url

pytestmark = pytest.mark.service


def test_creates_over_the_burst_get_429_with_retry_after(plumbing_weights):
    with run_server(create_burst=3, create_rate_per_min=6) as server:
        codes = [httpx.post(server.http + "/sessions", json={"model": TEST_MODEL}, timeout=30) for _ in range(4)]
    assert [r.status_code for r in codes] == [201, 201, 201, 429]
    refused = codes[-1]
    assert refused.json()["error"]["code"] == "rate_limited" and int(refused.headers["Retry-After"]) >= 1


def test_a_saturated_worker_refuses_new_sessions_and_readyz_says_so(plumbing_weights):
    # A slow worker (it waits 300 ms before each forward) and a client that sends faster than that:
    # frames wait longer than the admission limit of 100 ms.
    with run_server(batch_wait_ms=300, admission_max_lag_s=0.1, max_backlog=64) as server:
        session = server.create()

        async def flood() -> None:
            async with connect(stream_url(server, session)) as ws:
                await ws.recv()
                for i, frame in enumerate(moving_frames(40, seed=2)):
                    await ws.send(json.dumps({"type": "frame", "pts": i / 5}))
                    await ws.send(jpeg(frame))
                    await asyncio.sleep(0.02)
                await asyncio.sleep(1.0)  # the worker is still behind

        asyncio.run(flood())
        refused = httpx.post(server.http + "/sessions", json={"model": TEST_MODEL}, timeout=30)
        ready = httpx.get(server.http + "/readyz", timeout=30)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "saturated"
    assert refused.headers["Retry-After"] == "5"
    assert ready.status_code == 503 and any(r.startswith("saturated") for r in ready.json()["reasons"])
