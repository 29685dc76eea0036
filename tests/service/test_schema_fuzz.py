"""Every route of the running service, fuzzed from its own OpenAPI schema (schemathesis), while a
good session streams beside it.

Each generated request must get a documented status with a documented error code in a JSON body
(the table of docs/service-api.md "Errors"), never a 5xx other than the documented 503s, and a
short message without object reprs or errnos. Meanwhile a good session streams real frames paced
in real time; its labels must equal, seq by seq, those of the same frames sent alone. Examples per
route: ``MOVINET_FUZZ_EXAMPLES`` (default 300; 10000 for the long run), as in test_fuzz.py.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import re
import threading
from pathlib import Path

import httpx
import pytest
import schemathesis  # the `test` extra, as hypothesis: CI must not pass by skipping
from hypothesis import HealthCheck, given, settings
from websockets.asyncio.client import connect

from tests.service.conftest import (
    collect_until_close,
    moving_frames,
    results_of,
    run_server,
    send_images,
    stream_url,
)
from tests.service.test_fuzz import EXAMPLES, LEAKS

pytestmark = pytest.mark.service

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "service-api.md").read_text()


def documented_codes() -> dict[int, set[str]]:
    """The "Errors" table of docs/service-api.md: status → the codes it lists."""
    table = DOCS.split("### Errors", 1)[1].split("| Status |", 1)[1].split("\n\n", 1)[0]
    codes: dict[int, set[str]] = {}
    for row in table.splitlines():
        match = re.match(r"\| (\d{3}) \| (.*) \|$", row)
        if match:
            codes[int(match.group(1))] = set(re.findall(r"`([a-z_]+)`", match.group(2)))
    return codes


CODES = documented_codes()
assert {400, 401, 404, 422, 503} <= CODES.keys(), CODES  # the table is still where it was
GOOD = moving_frames(25, direction="right", seed=11)


async def stream_good(server) -> list[dict]:
    """25 frames at 5 fps in real time on a new session; the results."""
    session = server.create(backpressure={"policy": "block"})
    async with connect(stream_url(server, session)) as ws:
        await ws.recv()
        await send_images(ws, GOOD, [i / 5 for i in range(len(GOOD))], pace_s=0.2)
        await ws.send(json.dumps({"type": "eos"}))
        return results_of(await collect_until_close(ws, timeout=300))


class Canary(threading.Thread):
    """Good sessions, one after the other, for as long as the fuzzing runs; each one's results."""

    def __init__(self, server) -> None:
        super().__init__(daemon=True)
        self.server, self.runs, self.stop = server, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.runs.append(asyncio.run(stream_good(self.server)))


@pytest.fixture(scope="module")
def api(plumbing_weights):
    with run_server(max_message_bytes=256 * 1024, max_frame_pixels=640 * 480, max_backlog=64,
                    create_rate_per_min=10**7, create_burst=10**6, max_sessions_per_client=0) as server:
        server.alone = asyncio.run(stream_good(server))
        server.canary = Canary(server)
        server.canary.start()
        server.target, server.calls = None, 0
        yield server


def _offline(case) -> None:
    """A body whose RTSP URL the server would resolve or open becomes a WebSocket session (no test
    reaches the network)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("source"), dict) and body["source"].get("type") == "rtsp":
        body["source"] = {"type": "websocket"}


def _aim(api, case) -> None:
    """Every other request to a session's route goes to a real session with its token (random ids
    would only ever test the 404)."""
    if "session_id" not in (case.path_parameters or {}):
        return
    api.calls += 1
    if api.calls % 2:
        if api.target is None:  # the last one was deleted by a fuzzed DELETE
            api.target = api.create()
        case.path_parameters["session_id"] = api.target["session_id"]
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {api.target['token']}"}


def _check(api, case) -> None:
    _offline(case)
    _aim(api, case)
    response = case.call(base_url=api.http, timeout=30)
    status = response.status_code
    if status < 400:
        if status == 201 and case.path == "/sessions" and case.method.upper() == "POST":
            created = response.json()
            httpx.delete(f"{api.http}/sessions/{created['session_id']}", timeout=30,
                         headers={"Authorization": f"Bearer {created['token']}"})
        if case.method.upper() == "DELETE" and api.target and api.target["session_id"] in case.formatted_path:
            api.target = None
        return
    where = (case.method, case.path, status, response.text[:300])
    assert status in CODES, where
    body = response.json()
    code, message = body["error"]["code"], body["error"]["message"]
    assert code in CODES[status], where
    assert isinstance(message, str) and message and len(message) <= 1500 and not LEAKS.search(message), where


def _operations() -> list[str]:
    """``METHOD /path`` of every operation in the app's schema (read at collection: one test each)."""
    from service.api.app import create_app
    from service.settings import Settings

    schema = create_app(Settings()).openapi()
    # schemathesis imports its OpenAPI machinery lazily; done here, at collection, with a shallow
    # stack: in the full suite a first import under hypothesis' raised recursion limit hit CPython
    # 3.11's "AST constructor recursion depth mismatch" in pytest's assertion rewriting.
    for result in schemathesis.openapi.from_dict(schema).get_all_operations():
        result.ok().as_strategy()
    for name in LAZY_MODULES:  # what it still imports on the first request (schemathesis 4.32)
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    return [f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item]


LAZY_MODULES = ("schemathesis.generation.body_overrides", "schemathesis.generation.dictionaries",
                "schemathesis.transport.asgi", "schemathesis.transport.wsgi")
OPERATIONS = _operations()


@pytest.fixture(scope="module")
def live_schema(api):
    schema = schemathesis.openapi.from_url(api.http + "/openapi.json")
    return {f"{op.method.upper()} {op.path}": op for op in (result.ok() for result in schema.get_all_operations())}


def test_the_schema_has_every_route():
    assert len(OPERATIONS) >= 10 and "POST /sessions" in OPERATIONS and "GET /sessions/{session_id}" in OPERATIONS


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_route_answers_only_documented_codes(api, live_schema, name):
    operation = live_schema[name]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES < 1000, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def fuzz(case) -> None:
        _check(api, case)

    fuzz()


def test_the_good_session_beside_the_fuzzing_kept_its_labels(api):
    api.canary.stop.set()
    api.canary.join(300)
    assert api.canary.runs, "no good session ran beside the fuzzing"
    for beside in api.canary.runs:  # every good session that ran while the routes were fuzzed
        _equal(api.alone, beside)


def _equal(alone: list[dict], beside: list[dict]) -> None:
    assert len(alone) == len(beside) == len(GOOD)
    for a, b in zip(alone, beside, strict=True):
        assert (a["seq"], a["pts"], a["frame_index"]) == (b["seq"], b["pts"], b["frame_index"])
        assert [label["id"] for label in a["labels"]] == [label["id"] for label in b["labels"]], (a, b)
        for x, y in zip(a["labels"], b["labels"], strict=True):
            assert x["score"] == pytest.approx(y["score"], abs=2e-3)
