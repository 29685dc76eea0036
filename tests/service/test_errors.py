"""Bad input gets a documented error and the session goes on; auth and lifecycle close codes."""

from __future__ import annotations

import asyncio
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.service.conftest import (
    collect_until_close,
    errors_of,
    fitted,
    jpeg,
    moving_frames,
    reference_probs,
    results_of,
    run_server,
    send_images,
    stream_url,
)
from tests.service.test_stream import assert_matches_reference

pytestmark = pytest.mark.service

MAX_MESSAGE = 256 * 1024


@pytest.fixture(scope="module")
def limited(plumbing_weights):
    with run_server(max_message_bytes=MAX_MESSAGE, max_frame_pixels=640 * 480, max_backlog=64,
                    max_watchers_per_session=1, max_sessions=12) as handle:
        yield handle


async def _expect_close(url: str) -> tuple[int, dict]:
    async with connect(url) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        return ws.close_code, message


def test_refused_sockets_get_documented_close_codes(limited):
    session = limited.create()
    base = f"{limited.ws}/sessions/{session['session_id']}"
    cases = {
        f"{base}/stream": (4401, "token_missing"),
        f"{base}/stream?token=nope": (4403, "token_invalid"),
        f"{limited.ws}/sessions/s_unknown/stream?token=x": (4404, "session_not_found"),
        f"{base}/labels?token=nope": (4403, "token_invalid"),
        f"{base}/stream?token={session['token']}&after_seq=-1": (4400, "bad_request"),
    }
    for url, (code, error) in cases.items():
        got_code, message = asyncio.run(_expect_close(url))
        assert (got_code, message["type"], message["code"]) == (code, "error", error), url


def test_a_long_or_non_ascii_session_id_gets_its_close_code_and_a_bounded_message(limited):
    """The close reason is cut to 123 bytes of UTF-8 (a reason cut to 120 characters of two bytes
    each broke the close frame: no code reached the client, an ASGI error in the log), and no
    message quotes more than 64 characters of the id."""
    for session_id in ("%C3%A9" * 60, "a" * 7000, "%E2%82%AC" * 50):
        got_code, message = asyncio.run(_expect_close(f"{limited.ws}/sessions/{session_id}/stream?token=x"))
        assert (got_code, message["code"]) == (4404, "session_not_found")
        assert len(message["message"]) < 140, message
    response = httpx.get(f"{limited.http}/sessions/{'a' * 7000}", headers={"Authorization": "Bearer x"})
    assert response.status_code == 404 and len(response.json()["error"]["message"]) < 140


def test_a_control_message_type_that_is_not_a_string_is_named_without_a_python_repr(limited):
    session = limited.create()

    async def run():
        async with connect(stream_url(limited, session)) as ws:
            await ws.recv()
            for kind in ({"a": 1}, None, [1, 2], 7, "x" * 100):
                await ws.send(json.dumps({"type": kind}))
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws)

    errors = errors_of(asyncio.run(run()))
    assert [e["code"] for e in errors] == ["bad_message"] * 5
    assert all("{" not in e["message"] and "None" not in e["message"] and "[" not in e["message"] for e in errors)
    assert len(errors[-1]["message"]) < 100 and "xxxx" in errors[-1]["message"]


def test_a_declared_frame_rate_below_one_frame_a_hundred_seconds_is_refused(limited):
    """1e-300 fps made pts of 1e301 s and 300-digit frame indexes; 5e-324 an infinite frame
    duration (the decoder failed). Both are refused where they are declared."""
    for rate in (1e-300, 5e-324, 0.005):
        response = httpx.post(f"{limited.http}/sessions", json={"source": {"type": "websocket", "frame_rate": rate}})
        assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request", rate
    assert httpx.post(f"{limited.http}/sessions", json={"source": {"type": "websocket", "frame_rate": 0.01}}
                      ).status_code == 201
    session = limited.create()

    async def run():
        async with connect(stream_url(limited, session)) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "start", "input": "video", "frame_rate": 5e-324}))
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws)

    assert [(e["code"], "0.01" in e["message"]) for e in errors_of(asyncio.run(run()))] == [("bad_message", True)]


def test_an_event_policy_whose_exit_score_is_above_its_enter_score_is_refused(limited):
    response = httpx.post(f"{limited.http}/sessions", json={"events": {"enter_score": 0.2, "exit_score": 0.9}})
    assert response.status_code == 422 and response.json()["error"]["code"] == "invalid_request"
    assert "exit_score" in response.json()["error"]["message"]
    created = httpx.post(f"{limited.http}/sessions", json={"events": {"enter_score": 0.2}})  # exit left out
    assert created.status_code == 201, created.text
    httpx.delete(f"{limited.http}/sessions/{created.json()['session_id']}",
                 headers={"Authorization": f"Bearer {created.json()['token']}"})


def test_one_producer_per_session_and_watcher_limit(limited):
    session = limited.create()

    async def run():
        async with connect(stream_url(limited, session)) as first:
            await first.recv()
            second = await _expect_close(stream_url(limited, session))
            async with connect(stream_url(limited, session, "labels")) as watcher:
                await watcher.recv()
                too_many = await _expect_close(stream_url(limited, session, "labels"))
            return second, too_many

    (code, message), (code2, message2) = asyncio.run(run())
    assert (code, message["code"]) == (4409, "stream_in_use")
    assert (code2, message2["code"]) == (4429, "too_many_watchers")


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def test_bad_input_is_reported_and_neither_this_nor_a_parallel_session_stops(limited):
    loaded = limited.loaded()
    good_frames = moving_frames(25, direction="right", seed=11)
    good, bad = limited.create(), limited.create(source={"type": "websocket", "input": "images"})
    corrupt_jpeg = jpeg(good_frames[0])[:200] + b"\x00" * 500

    async def good_client():
        async with connect(stream_url(limited, good)) as ws:
            await ws.recv()
            await send_images(ws, good_frames, [i / 5 for i in range(25)], pace_s=0.03)
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws)

    async def bad_client():
        async with connect(stream_url(limited, bad)) as ws:
            await ws.recv()
            await ws.send(b"\x00\x01 this is not an image")  # unsupported_format
            await ws.send(json.dumps({"type": "frame", "pts": 0.0}))
            await ws.send(corrupt_jpeg)  # decode_error
            await ws.send(json.dumps({"type": "frame", "pts": 0.2}))
            await ws.send(jpeg(good_frames[1]))  # fine
            await ws.send(json.dumps({"type": "frame", "pts": 0.4}))
            await ws.send(_png(1000, 1000))  # frame_too_large (1e6 > 640*480 pixels)
            await ws.send(b"\xff\xd8\xff" + b"\x00" * (MAX_MESSAGE + 10))  # message_too_large
            await ws.send(json.dumps({"type": "frame", "pts": -5.0}))
            await ws.send(jpeg(good_frames[2]))  # late_frame: pts went backwards
            await ws.send("not json")  # bad_message
            await ws.send(json.dumps({"type": "dance"}))  # bad_message
            await ws.send(json.dumps({"type": "frame", "pts": "soon"}))  # bad_message
            await ws.send(json.dumps({"type": "frame", "pts": 0.6}))
            await ws.send(jpeg(good_frames[3]))  # fine again
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws)

    async def run():
        return await asyncio.gather(good_client(), bad_client())

    good_messages, bad_messages = asyncio.run(run())
    codes = [m["code"] for m in errors_of(bad_messages)]
    assert sorted(codes) == sorted(["unsupported_format", "decode_error", "frame_too_large", "message_too_large",
                                    "late_frame", "bad_message", "bad_message", "bad_message"])
    assert all(m["message"] for m in errors_of(bad_messages))
    bad_results = results_of(bad_messages)
    assert [r["pts"] for r in bad_results] == [0.2, 0.6]
    assert bad_messages[-1]["type"] == "eos"
    status = httpx.get(f"{limited.http}/sessions/{bad['session_id']}", params={"token": bad["token"]}).json()
    assert status["frames_processed"] == 2 and status["frames_dropped"] == 5  # the one of each refused message
    # The good session, streaming at the same time, is untouched.
    assert not errors_of(good_messages)
    assert_matches_reference(results_of(good_messages),
                             reference_probs(loaded, [fitted(loaded, f) for f in good_frames]))


def test_broken_video_stream_is_reported_and_a_new_stream_works(limited):
    session = limited.create()
    from tests.service.conftest import encode_video

    noise = np.random.default_rng(12).integers(0, 255, (20, 240, 320, 3), dtype=np.uint8)
    plain_mp4 = encode_video(noise, fps=10, container="mp4")  # moov at the end, past the probe size
    assert len(plain_mp4) > 200_000
    webm = encode_video(moving_frames(10, seed=13), fps=10, container="webm")

    async def run():
        async with connect(stream_url(limited, session)) as ws:
            await ws.recv()
            for i in range(0, len(plain_mp4), 64 * 1024):
                await ws.send(plain_mp4[i : i + 64 * 1024])
            await ws.send(json.dumps({"type": "start"}))  # flush: the failed stream is over
            await ws.send(webm)
            await ws.send(json.dumps({"type": "eos"}))
            return await collect_until_close(ws)

    messages = asyncio.run(run())
    errors = errors_of(messages)
    assert errors and errors[0]["code"] == "decode_error" and "moov" in errors[0]["message"]
    assert len(results_of(messages)) == 5


def test_too_fast_sender_gets_drops_counted(plumbing_weights):
    with run_server(max_backlog=2, batch_wait_ms=150) as slow:
        session = slow.create(backpressure={"policy": "newest_only"})
        frames = moving_frames(40, seed=14)

        async def run():
            async with connect(stream_url(slow, session)) as ws:
                await ws.recv()
                await send_images(ws, frames, [i / 5 for i in range(40)])  # 8 s of video at once
                await ws.send(json.dumps({"type": "eos"}))
                return await collect_until_close(ws)

        results = results_of(asyncio.run(run()))
        status = httpx.get(f"{slow.http}/sessions/{session['session_id']}", params={"token": session["token"]}).json()
        metrics = httpx.get(f"{slow.http}/metrics").text
    assert results[-1]["dropped"] > 0 and len(results) < 40
    assert status["frames_processed"] == len(results)
    assert status["frames_processed"] + status["frames_dropped"] == 40
    assert [r["seq"] for r in results] == sorted(r["seq"] for r in results)
    assert 'movinet_frames_dropped_total{reason="backpressure"}' in metrics


def test_delete_closes_the_sockets_with_4410(limited):
    session = limited.create()

    async def run():
        async with connect(stream_url(limited, session)) as ws, \
                connect(stream_url(limited, session, "labels")) as watcher:
            await ws.recv()
            await watcher.recv()
            async with httpx.AsyncClient() as http:
                response = await http.delete(f"{limited.http}/sessions/{session['session_id']}",
                                             headers={"Authorization": f"Bearer {session['token']}"})
            assert response.status_code == 204
            out = []
            for sock in (ws, watcher):
                message = json.loads(await asyncio.wait_for(sock.recv(), 5))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(sock.recv(), 5)
                out.append((sock.close_code, message["code"]))
            return out

    assert asyncio.run(run()) == [(4410, "session_deleted")] * 2


def test_idle_sessions_expire(limited):
    session = limited.create(idle_timeout_s=1)  # the shortest allowed
    assert session["expires_at"] == pytest.approx(time.time() + 1, abs=0.5)

    async def run():
        async with connect(stream_url(limited, session, "labels")) as watcher:
            await watcher.recv()
            message = json.loads(await asyncio.wait_for(watcher.recv(), 5))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(watcher.recv(), 5)
            return watcher.close_code, message["code"]

    assert asyncio.run(run()) == (4410, "session_expired")
    response = httpx.get(f"{limited.http}/sessions/{session['session_id']}", params={"token": session["token"]})
    assert response.status_code == 404
    assert "movinet_sessions_closed_total{reason=\"expired\"}" in httpx.get(f"{limited.http}/metrics").text


def test_shutdown_closes_sockets_cleanly(plumbing_weights):
    from service.cli import DrainingServer  # noqa: F401 - the server `movinet-service serve` runs

    async def connect_and_wait(server, session, ready):
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            ready.set()
            messages = []
            try:
                async for raw in ws:
                    messages.append(json.loads(raw))
            except ConnectionClosed:
                pass
            return ws.close_code, messages

    with run_server(draining=True) as server:
        session = server.create()
        loop = asyncio.new_event_loop()
        ready = asyncio.Event()
        task = loop.create_task(connect_and_wait(server, session, ready))
        loop.run_until_complete(asyncio.wait_for(ready.wait(), 10))
        server.stop()
        code, messages = loop.run_until_complete(asyncio.wait_for(task, 15))
        loop.close()
    assert code == 1012
    assert messages == [{"type": "closing", "reason": "shutdown"}]
