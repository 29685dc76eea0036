"""Fuzzing every parser of client bytes (hypothesis): no crash, only documented error codes.

Targets: the WebSocket control messages (``_parse_control``, and ``_control`` with a fake socket),
``sniff`` and ``decode_image``, the RTSP URL policy (``parse_url``, ``address_allowed``), the
session-create body (the parser and validation directly, and over HTTP on a real server); and one
hostile client that sends random control messages and random binary frames on a socket while a
good session streams real frames beside it: the good session's labels are those of an
undisturbed run, seq by seq.

Each target runs ``MOVINET_FUZZ_EXAMPLES`` examples (default 300, so the normal run stays fast;
``MOVINET_FUZZ_EXAMPLES=10000`` for the long run, the hostile client then sends as many messages).
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import math
import os
import random
import re
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.requests import Request
from websockets.asyncio.client import connect

from service.api.bodies import session_create, validation_message
from service.api.schemas import SessionCreate
from service.api.sockets import MAX_CONTROL_BYTES, _control, _parse_control
from service.errors import ApiError, MediaError
from service.sources.decode import decode_image, sniff
from service.sources.urls import SCHEMES, SourceRefused, address_allowed, parse_url
from service.sources.websocket import MAX_PTS_S
from tests.service.conftest import (
    TEST_MODEL,
    collect_until_close,
    errors_of,
    jpeg,
    moving_frames,
    results_of,
    run_server,
    send_images,
    stream_url,
)

pytestmark = pytest.mark.service

EXAMPLES = int(os.environ.get("MOVINET_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES < 1000,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
# What a client may be told: the documented codes (docs/service-api.md, "Errors").
WS_CODES = {"unsupported_format", "decode_error", "unsupported_codec", "frame_too_large", "message_too_large",
            "late_frame", "bad_message", "store_unavailable"}
HTTP_CODES = {201: {None}, 404: {"unknown_model"}, 413: {"body_too_large"}, 415: {"unsupported_media_type"},
              422: {"invalid_request", "model_not_streamable", "no_weights", "url_not_allowed",
                    "address_not_allowed", "host_not_found"},
              429: {"too_many_sessions", "rate_limited"}, 503: {"saturated", "store_unavailable", "model_unavailable"}}
LEAKS = re.compile(r"<[^>]* at 0x[0-9a-fA-F]+>|\[Errno|Traceback|object at 0x")


def clean_message(message: str, limit: int = 1000, sent: str | bytes = "") -> None:
    """A short message without object reprs or errnos (other than ones the client itself sent and
    that came back quoted: ``no model named '[Errno'``)."""
    assert isinstance(message, str) and message and len(message) <= limit, message[:200]
    sent = sent.decode("utf-8", "replace") if isinstance(sent, bytes) else sent
    for leak in LEAKS.finditer(message):
        assert leak.group(0) in sent, message[:200]


# --- strategies ----------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


@st.composite
def mutated(draw, text: str) -> str:
    """``text`` truncated, with a character replaced, inserted or a chunk duplicated."""
    if not text:
        return text
    i = draw(st.integers(0, len(text) - 1))
    how = draw(st.sampled_from(["truncate", "replace", "insert", "duplicate", "keep"]))
    if how == "truncate":
        return text[:i]
    if how == "replace":
        return text[:i] + draw(st.characters()) + text[i + 1:]
    if how == "insert":
        return text[:i] + draw(st.text(max_size=4)) + text[i:]
    if how == "duplicate":
        j = draw(st.integers(i, len(text)))
        return text[:j] + text[i:j] + text[j:]
    return text


def dumps(value: Any) -> str:
    return json.dumps(value)  # NaN and Infinity included, as a sloppy client writes them


control_dicts = st.fixed_dictionaries(
    {"type": st.sampled_from(["frame", "start", "ping", "dance", "", "FRAME"]) | json_values},
    optional={"pts": scalars | json_values, "t": json_values,
              "input": st.sampled_from(["auto", "images", "video", "sound"]) | json_values,
              "frame_rate": st.floats(-10, 500) | scalars})
control_texts = st.one_of(
    control_dicts.map(dumps),
    control_dicts.map(dumps).flatmap(mutated),
    st.text(max_size=300),
    json_values.map(dumps),
    st.integers(0, 200).map(lambda n: '{"type": "ping", "t": ' + "[" * n + "]" * n + "}"),
    st.sampled_from(['{"type": "ping", "type": "frame"}', '{"type": "frame", "pts": NaN}',
                     '{"type": "frame", "pts": 1e999}', '{"type": "ping", "t": ' + "9" * 5000 + "}",
                     '{"type": "start", "frame_rate": true}', '{"type": "frame", "pts": -1e308}']),
)


# --- control messages -------------------------------------------------------------------------------


@FUZZ
@given(control_texts)
def test_parse_control_returns_an_object_or_says_why(text):
    try:
        message = _parse_control(text)
    except ValueError as exc:
        assert str(exc).startswith("control message"), str(exc)
        clean_message(str(exc), 200, sent=text)
        return
    assert message is None or (isinstance(message, dict) and "type" in message)
    if message is not None:
        json.dumps(message, allow_nan=False)  # nothing non-finite gets through


class FakeSource:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.sink = SimpleNamespace(last_seq=0)

    def set_next_pts(self, pts: float) -> None:
        assert isinstance(pts, float) and math.isfinite(pts) and abs(pts) <= MAX_PTS_S
        self.calls.append(("pts", pts))

    async def start_stream(self, input_kind, frame_rate) -> None:
        assert input_kind in (None, "auto", "images", "video")
        assert frame_rate is None or (not isinstance(frame_rate, bool) and 0 < frame_rate <= 240)
        self.calls.append(("start", input_kind, frame_rate))

    async def end_stream(self) -> None:
        self.calls.append(("end",))


class FakeConnection:
    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed = False

    async def send(self, message: dict[str, Any]) -> bool:
        self.sent.append(json.dumps(message, allow_nan=False))  # the client must get strict JSON
        return True

    async def close(self, code: int, reason: str = "", message: dict[str, Any] | None = None) -> None:
        if message is not None:
            await self.send(message)
        self.closed = True


LOOP = asyncio.new_event_loop()


@FUZZ
@given(control_texts | control_dicts.map(dumps).map(lambda t: t if len(t) < MAX_CONTROL_BYTES else t[:100]))
def test_control_messages_get_an_action_or_bad_message(text):
    source, connection, reports = FakeSource(), FakeConnection(), []

    async def report(code: str, message: str) -> None:
        reports.append((code, message))

    pump = SimpleNamespace(sent_seq=0)
    done = LOOP.run_until_complete(_control(text, source, connection, pump, report))
    for code, message in reports:
        assert code == "bad_message"
        clean_message(message, 200, sent=text)
    assert len(reports) + len(source.calls) + len(connection.sent) <= 2  # one answer per message
    for sent in connection.sent:
        assert json.loads(sent)["type"] in ("pong", "eos") and len(sent) < 200
    assert done == connection.closed == (json.loads(connection.sent[-1])["type"] == "eos" if connection.sent
                                          else False)  # only an eos ends the socket


def test_control_eos_ends_the_socket():
    source, connection = FakeSource(), FakeConnection()

    async def report(code: str, message: str) -> None:
        raise AssertionError(code)

    pump = SimpleNamespace(sent_seq=0)
    assert LOOP.run_until_complete(_control('{"type": "eos"}', source, connection, pump, report)) is True
    assert connection.closed and json.loads(connection.sent[-1])["type"] == "eos"


# --- images ------------------------------------------------------------------------------------------


def _image(fmt: str, size: tuple[int, int] = (24, 16)) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(len(fmt)).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, fmt)
    return buffer.getvalue()


SEEDS = {fmt: _image(fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")}
SEEDS["PNG_BIG"] = _image("PNG", (300, 200))  # over the fuzzed pixel limit
MAX_PIXELS = 200 * 100


@st.composite
def image_bytes(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(sorted(SEEDS.values()))))
    for _ in range(draw(st.integers(0, 6))):
        how = draw(st.sampled_from(["flip", "truncate", "insert", "header"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif how == "truncate":
            del data[i:]
        elif how == "insert":
            data[i:i] = draw(st.binary(max_size=16))
        elif how == "header" and len(data) > 24:  # where the dimensions live (PNG IHDR, GIF, BMP)
            j = draw(st.integers(0, 23))
            data[j] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(st.binary(max_size=64) | image_bytes())
def test_sniff_never_fails(data):
    assert sniff(data) in ("image", "video", None)


@FUZZ
@given(image_bytes() | st.binary(max_size=256))
def test_decode_image_returns_pixels_or_a_documented_error(data):
    try:
        rgb = decode_image(data, MAX_PIXELS)
    except MediaError as exc:
        assert exc.code in ("decode_error", "unsupported_format", "frame_too_large"), exc.code
        clean_message(exc.message, 200)
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert 0 < rgb.shape[0] * rgb.shape[1] <= MAX_PIXELS


# --- RTSP URLs and addresses --------------------------------------------------------------------------

hosts = st.one_of(st.ip_addresses().map(lambda ip: f"[{ip}]" if ip.version == 6 else str(ip)),
                  st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True), st.text(max_size=20),
                  st.sampled_from(["localhost", "camera.example.org", "[::1]", "[fe80::1%eth0]", "0x7f.1", ""]))
urls = st.one_of(
    st.text(max_size=100),
    st.builds(lambda scheme, user, host, port, path: f"{scheme}://{user}{host}{port}{path}",
              st.sampled_from(["rtsp", "rtsps", "RTSP", "http", "file", "rtmp", ""]),
              st.sampled_from(["", "user:s3cr3tPW@", "s3cr3tPW@", "a:b:c@", "u@v@"]) | st.text(max_size=10).map(lambda t: t + "@"),
              hosts,
              st.sampled_from(["", ":554", ":0", ":65536", ":-1", ":abc", ":"]) | st.integers(-5, 70000).map(lambda p: f":{p}"),
              st.sampled_from(["", "/", "/stream1", "/s?password=s3cr3tPW&x=1", "/%00", "/../../etc"]) | st.text(max_size=20)),
)


@FUZZ
@given(urls)
def test_parse_url_accepts_only_rtsp_or_says_why(url):
    try:
        target = parse_url(url)
    except SourceRefused as exc:
        assert exc.code == "url_not_allowed"
        clean_message(exc.message, 200, sent=url)
        assert "s3cr3tPW" not in exc.message
        return
    assert target.scheme in SCHEMES and target.host and 0 <= target.port <= 65535
    assert not any(ch.isspace() or ord(ch) < 0x20 for ch in url)
    assert "s3cr3tPW" not in target.redacted
    assert target.with_host("192.0.2.1").startswith(f"{target.scheme}://")


@FUZZ
@given(st.ip_addresses())
def test_address_allowed_judges_embedded_ipv4_by_the_ipv4(ip):
    verdict = address_allowed(str(ip))
    assert isinstance(verdict, bool)
    if ip.version == 4:
        mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
        assert address_allowed(str(mapped)) == verdict
        sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80))
        assert address_allowed(str(sixtofour)) == verdict
        if ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast:
            assert not verdict
    elif ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_private:
        assert not verdict


@FUZZ
@given(st.text(max_size=40))
def test_address_allowed_refuses_what_is_not_an_address(text):
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        with pytest.raises(ValueError):
            address_allowed(text)
    else:
        assert isinstance(address_allowed(text), bool)


# --- the session-create body ----------------------------------------------------------------------

FIELD_VALUES = {
    "model": st.sampled_from([TEST_MODEL, "movinet_test_base", "movinet_a5_stream", "nope"]) | st.text(max_size=200),
    "weights": st.sampled_from(["plumbing", "random", "nope"]) | scalars,
    "top_k": st.integers(-3, 200) | scalars,
    "min_score": st.floats(-1, 2) | scalars,
    "smoothing": st.floats(-1, 2) | scalars,
    "idle_timeout_s": st.floats(-1, 10_000) | scalars,
    "window": st.fixed_dictionaries({}, optional={"policy": st.sampled_from(["windowed", "unbounded", "x"]) | scalars,
                                                  "frames": st.integers(-2, 20_000) | scalars}) | json_values,
    "backpressure": st.fixed_dictionaries({}, optional={
        "policy": st.sampled_from(["drop_oldest", "newest_only", "block", "x"]) | scalars,
        "max_backlog": st.integers(-2, 2000) | scalars}) | json_values,
    "source": st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["websocket", "webrtc", "rtsp", "x"]) | scalars,
        "input": st.sampled_from(["auto", "images", "video"]) | scalars,
        "frame_rate": st.floats(-1, 500) | scalars,
        "url": urls, "transport": st.sampled_from(["tcp", "udp", "x"])}) | json_values,
    "surprise": json_values,
}
create_dicts = st.fixed_dictionaries({}, optional=FIELD_VALUES)
# Bodies that get past validation, so that the create path itself is fuzzed (model lookup, RTSP URL policy).
plausible_dicts = st.fixed_dictionaries({}, optional={
    "model": st.sampled_from([TEST_MODEL, TEST_MODEL, "movinet_test_base", "movinet_a5_stream", "movinet_z9_stream"])
    | st.text(max_size=40),
    "weights": st.sampled_from(["plumbing", "random", "nope"]),
    "top_k": st.integers(1, 100), "min_score": st.floats(0, 1), "smoothing": st.floats(0, 0.99),
    "idle_timeout_s": st.floats(1, 3600),
    "window": st.fixed_dictionaries({"policy": st.sampled_from(["windowed", "unbounded"])},
                                    optional={"frames": st.integers(2, 10_000)}),
    "backpressure": st.fixed_dictionaries({}, optional={"policy": st.sampled_from(["drop_oldest", "newest_only", "block"]),
                                                        "max_backlog": st.integers(1, 1000)}),
    "source": st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["websocket", "webrtc"])}),
        st.fixed_dictionaries({"type": st.just("rtsp"), "url": st.one_of(
            urls, st.ip_addresses().map(lambda ip: f"rtsp://{f'[{ip}]' if ip.version == 6 else ip}/s"))})),
})
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "application/problem+json", "text/plain",
                 "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "APPLICATION/JSON"]
create_bodies = st.tuples(
    st.one_of(create_dicts.map(dumps).map(str.encode), plausible_dicts.map(dumps).map(str.encode),
              plausible_dicts.map(dumps).map(str.encode),
              create_dicts.map(dumps).flatmap(mutated).map(lambda t: t.encode("utf-8", "surrogatepass")),
              create_dicts.map(lambda d: (dumps(d)[:-1] + ', "top_k": 3}' if len(d) else '{"a": 1, "a": 2}').encode()),
              st.binary(max_size=100), json_values.map(dumps).map(str.encode)),
    st.sampled_from(CONTENT_TYPES),
)


def _request(body: bytes, content_type: str) -> Request:
    settings = SimpleNamespace(max_idle_timeout_s=3600.0, http_head_timeout_s=10.0)  # what the body code reads
    scope = {"type": "http", "method": "POST", "path": "/sessions", "query_string": b"",
             "headers": [(b"content-type", content_type.encode())] if content_type else [],
             "app": SimpleNamespace(state=SimpleNamespace(settings=settings))}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


@FUZZ
@given(create_bodies)
def test_the_create_body_parses_or_is_refused_with_a_documented_code(case):
    body, content_type = case
    try:
        created = LOOP.run_until_complete(session_create(_request(body, content_type)))
    except ApiError as exc:
        assert (exc.status, exc.code) in ((415, "unsupported_media_type"), (422, "invalid_request")), exc.code
        clean_message(exc.message, 300, sent=body)
        event(f"{exc.status} {exc.message.split(':')[0][:40]}")
        return
    except RequestValidationError as exc:
        clean_message(validation_message(exc.errors()), 1500, sent=body)
        event("422 validation")
        return
    event("accepted")
    assert isinstance(created, SessionCreate)
    assert isinstance(created.top_k, int) and not isinstance(created.top_k, bool)
    assert created.idle_timeout_s is None or 1 <= created.idle_timeout_s <= 3600


@pytest.fixture(scope="module")
def fuzz_server(plumbing_weights):
    with run_server(max_message_bytes=256 * 1024, max_frame_pixels=640 * 480, max_backlog=64, max_sessions=64,
                    create_rate_per_min=10**7, create_burst=10**6) as handle, httpx.Client(timeout=30) as client:
        handle.client = client  # one keep-alive connection for thousands of requests
        yield handle


def _reaches_the_network(body: bytes) -> bool:
    """Whether the server would resolve a name or open a camera for this body (neither is for a test)."""
    try:
        source = json.loads(body).get("source")
        target = parse_url(source["url"]) if source.get("type") == "rtsp" else None
    except Exception:
        return False  # the server refuses it before any lookup
    if target is None:
        return False
    try:
        return address_allowed(target.host)  # a public address: the server would connect to it
    except ValueError:
        return True  # a host name: the server would resolve it


def _http_body(case):
    body, content_type = case
    if b'"rtsp"' in body and _reaches_the_network(body):
        body = body.replace(b'"rtsp"', b'"websocket"')
    return body, content_type


@FUZZ
@given(create_bodies.map(_http_body))
def test_the_create_route_answers_only_documented_codes(fuzz_server, case):
    body, content_type = case
    headers = {"Content-Type": content_type} if content_type else {}
    response = fuzz_server.client.post(f"{fuzz_server.http}/sessions", content=body, headers=headers)
    assert response.status_code in HTTP_CODES, (response.status_code, response.text[:300])
    answer = response.json()
    event(f"{response.status_code} {answer.get('error', {}).get('code', '')}")
    if response.status_code == 201:
        fuzz_server.client.delete(f"{fuzz_server.http}/sessions/{answer['session_id']}",
                                  headers={"Authorization": f"Bearer {answer['token']}"})
        return
    assert answer["error"]["code"] in HTTP_CODES[response.status_code], answer
    clean_message(answer["error"]["message"], 1500, sent=body)


# --- a hostile client beside a good session ---------------------------------------------------------


def hostile_messages(rng: random.Random, count: int) -> list[str | bytes]:
    """Random control messages and binary frames: junk, magic bytes with junk, broken and whole images."""
    good = jpeg(moving_frames(1, seed=7)[0])
    magics = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP", b"\x1a\x45\xdf\xa3",
              b"\x00\x00\x00\x18ftypisom", b"\x00\x00\x00\x01", b"\x00\x00\x01", b"GIF89a"]
    kinds = ["frame", "start", "ping", "dance", "", None, 7]
    out: list[str | bytes] = []
    for _ in range(count):
        pick = rng.random()
        if pick < 0.35:
            message: dict[str, Any] = {"type": rng.choice(kinds)}
            for key in rng.sample(["pts", "t", "input", "frame_rate", "x"], rng.randint(0, 3)):
                message[key] = rng.choice([rng.uniform(-1e3, 1e3), rng.randint(-5, 10**6), "soon", None, True,
                                           [1, 2], {"a": 1}, float("nan"), 1e308, rng.choice(["images", "video"])])
            text = json.dumps(message)
            if rng.random() < 0.2:
                text = text[: rng.randint(0, len(text))]
            out.append(text)
        elif pick < 0.45:
            out.append(rng.choice(["not json", "[]", "{}", '{"type": "ping", "type": "eos"}', "{" * 40,
                                   "\u0000\ud7ff", "x" * rng.randint(0, 2000)]))
        elif pick < 0.75:
            out.append(rng.choice(magics) + rng.randbytes(rng.randint(0, 3000)))
        elif pick < 0.85:
            out.append(rng.randbytes(rng.randint(0, 500)))
        elif pick < 0.95:
            out.append(good[: rng.randint(0, len(good))] if rng.random() < 0.5 else good)
        else:
            out.append(b"\xff\xd8\xff" + bytes(256 * 1024 + 10))  # over max_message_bytes
    return out


def test_a_hostile_client_does_not_disturb_a_parallel_session(fuzz_server):
    server = fuzz_server
    frames = moving_frames(25, direction="right", seed=11)
    pts = [i / 5 for i in range(25)]
    rng = random.Random(20261201)
    hostile = hostile_messages(rng, max(300, EXAMPLES))

    async def good_client(session):
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            await send_images(ws, frames, pts, pace_s=0.03)
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws, timeout=300)

    async def hostile_client(session):
        async with connect(stream_url(server, session), max_size=None) as ws:
            await ws.recv()
            received: list[dict[str, Any]] = []

            async def read() -> None:
                async for raw in ws:
                    received.append(json.loads(raw))

            reader = asyncio.create_task(read())
            for message in hostile:
                await ws.send(message)
            await ws.send(json.dumps({"type": "eos"}))
            await asyncio.wait_for(reader, 300)
            return received, ws.close_code

    def create(**body):
        return server.create(backpressure={"policy": "block"}, **body)

    alone = results_of(asyncio.run(good_client(create())))

    async def both():
        return await asyncio.gather(good_client(create()), hostile_client(create()))

    beside, (hostile_received, hostile_close) = asyncio.run(both())
    assert not errors_of(beside)
    disturbed = results_of(beside)
    assert len(alone) == len(disturbed) == 25
    for a, b in zip(alone, disturbed, strict=True):
        assert (a["seq"], a["pts"], a["frame_index"]) == (b["seq"], b["pts"], b["frame_index"])
        assert [label["id"] for label in a["labels"]] == [label["id"] for label in b["labels"]], (a, b)
        for x, y in zip(a["labels"], b["labels"], strict=True):
            assert x["score"] == pytest.approx(y["score"], abs=2e-3)
    # The hostile socket was told only documented codes, stayed open, and got its eos.
    codes = {m["code"] for m in errors_of(hostile_received)}
    assert codes and codes <= WS_CODES, codes
    assert all(m["message"] and not LEAKS.search(m["message"]) for m in errors_of(hostile_received))
    assert hostile_received[-1]["type"] == "eos" and hostile_close == 1000
    assert httpx.get(f"{server.http}/healthz").status_code == 200
