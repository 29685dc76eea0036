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


def test_near_capacity_sessions_are_admitted_one_at_a_time():
    """Past a third of the lag limit one new session per admission_probe_s is let in, so that its
    load shows in the lag before the next; past the limit none."""
    from service.admission import Admission
    from service.errors import ApiError
    from service.settings import Settings
    from service.store import WorkerLoad

    class Worker:
        lag_s = 0.0

        def load(self) -> WorkerLoad:
            return WorkerLoad("w", 10, 256, self.lag_s)

    clock = [100.0]
    worker = Worker()
    gate = Admission(Settings(admission_max_lag_s=0.3, admission_probe_s=3.0), store=None, inference=worker,
                     clock=lambda: clock[0])

    def admitted() -> bool | str:
        try:
            asyncio.run(gate.check_load())
            return True
        except ApiError as exc:
            assert exc.status == 503 and exc.code == "saturated"
            return exc.headers["Retry-After"]

    assert [admitted() for _ in range(5)] == [True] * 5  # lag well under a third of the limit
    worker.lag_s = 0.15  # half the limit: near capacity
    assert admitted() is True
    assert admitted() == "3"
    clock[0] += 2.5
    assert admitted() == "1"
    clock[0] += 0.75
    assert admitted() is True and admitted() == "3"
    # A create that took the slot and then failed (a refused URL, a quota) gives it back.
    clock[0] += 3.25
    taken = asyncio.run(gate.check_load())
    assert taken is not None and admitted() == "3"
    gate.give_back(taken)
    assert admitted() is True and admitted() == "3"
    worker.lag_s = 0.31  # past the limit: none
    clock[0] += 10
    assert admitted() == "5"
    off = Admission(Settings(admission_max_lag_s=0.3, admission_probe_s=0), store=None, inference=worker)
    worker.lag_s = 0.2
    asyncio.run(off.check_load())
    asyncio.run(off.check_load())  # 0: no probing


def test_a_frame_is_due_by_its_streams_clock_not_by_when_a_fast_client_sent_it():
    from service.worker.held import Held

    held = Held.__new__(Held)  # only the clock fields matter here
    held.pts_offset = held.last_pts = None
    assert held.due_at(1000.0, 0.0) == 1000.0  # the first frame anchors the stream's clock
    assert held.due_at(1000.1, 1.0) == 1001.0  # sent 0.9 s ahead (a recording, faster than real time)
    assert held.due_at(1003.0, 1.2) == pytest.approx(1001.2)  # late: due before it came
    assert held.due_at(1010.0, 0.0) == 1010.0  # pts went back: a new stream, a new anchor
    assert held.due_at(1011.0, None) == 1011.0  # no pts: due when it came
