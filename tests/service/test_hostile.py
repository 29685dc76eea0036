"""Reproductions of the hostile inputs found from outside (docs/reliability.md): each is an error
message or a documented close, never a crash, and the session goes on."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from service.errors import MediaError
from service.sources.decode import decode_image
from service.sources.urls import address_allowed
from tests.service.conftest import jpeg, moving_frames, stream_url

pytestmark = pytest.mark.service


def test_hostile_control_messages_get_errors_and_the_stream_goes_on(server):
    session = server.create()

    async def run():
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            replies = []
            for text in ['{"type":"frame","pts":NaN}', '{"type":"frame","pts":Infinity}',
                         '{"type":"frame","pts":1e308}', '{"type":"frame","pts":' + "9" * 400 + "}",
                         "[" * 20_000 + "]" * 20_000, '{"type":"ping","t":NaN}', '{"type":"ping","t":1.5}']:
                await ws.send(text)
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(json.dumps({"type": "frame", "pts": 0.0}))
            await ws.send(jpeg(moving_frames(1)[0]))
            result = json.loads(await asyncio.wait_for(ws.recv(), 30))
            return replies, result

    replies, result = asyncio.run(run())
    # NaN is not JSON: refused as such (never echoed as a non-standard token), like the rest.
    assert [r["type"] for r in replies[:6]] == ["error"] * 6 and all(r["code"] == "bad_message" for r in replies[:6])
    assert replies[6] == {"type": "pong", "t": 1.5}
    assert result["type"] == "result" and result["seq"] == 1


def test_a_non_ascii_digit_in_after_seq_is_refused_before_the_producer_slot_is_taken(server):
    session = server.create()

    async def run():
        url = stream_url(server, session) + "&after_seq=%C2%B2"  # "²": isdigit() says yes, int() says no
        async with connect(url) as ws:
            message = json.loads(await ws.recv())
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
        async with connect(stream_url(server, session)) as ws:  # the slot is free: a producer gets in
            greeting = json.loads(await ws.recv())
        return message, closed.value.rcvd.code, greeting

    message, code, greeting = asyncio.run(run())
    assert message["code"] == "bad_request" and code == 4400 and greeting["type"] == "session"


@pytest.mark.parametrize("address", ["64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "2002:c0a8:101::1",
                                     "::7f00:1", "::ffff:10.0.0.1", "2001:0:4136:e378:8000:63bf:80ff:fffe"])
def test_ipv6_forms_of_private_addresses_are_refused(address):
    assert not address_allowed(address)


def test_public_addresses_pass_in_every_form():
    assert address_allowed("8.8.8.8") and address_allowed("64:ff9b::808:808") and address_allowed("2002:808:808::1")


def test_a_jpeg_declaring_65500_squared_is_too_large_not_undecodable():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline frame header: length (2), precision (1), height (2), width (2)
    data[sof + 5 : sof + 9] = (65500).to_bytes(2, "big") * 2
    with pytest.raises(MediaError) as error:
        decode_image(bytes(data), max_pixels=3840 * 2160)
    assert error.value.code == "frame_too_large"
