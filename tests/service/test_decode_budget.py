"""What video decoding may take (service/sources/budget.py): the pixels decoded at once, each
stream's pace, the decode threads' priority; and a refused stream on a real server."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import httpx
import pytest
from websockets.asyncio.client import connect

from service.errors import MediaError
from service.sources.budget import DecodeBudget, lower_priority
from tests.service.conftest import encode_video, moving_frames, results_of, run_server, stream_url
from tests.service.test_media import _decode_chunks


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_streams_share_the_pixels_and_a_refused_one_holds_nothing():
    budget = DecodeBudget(max_pixels=3 * 1000)
    first, second, third = budget.stream(), budget.stream(), budget.stream()
    first.reserve(40, 25)  # 1000
    second.reserve(50, 30)  # 1500
    with pytest.raises(MediaError) as refused:
        third.reserve(30, 20)  # 600 > the 500 left
    assert refused.value.code == "decoder_busy" and "2 streams" in refused.value.message
    assert (budget.reserved, budget.streams, third.pixels) == (2500, 2, 0)
    second.reserve(20, 25)  # a smaller size mid-stream gives pixels back
    assert budget.reserved == 1500
    third.reserve(30, 20)
    for share in (first, second, third):
        share.release()
        share.release()  # twice is harmless
    assert (budget.reserved, budget.streams) == (0, 0)
    unlimited = DecodeBudget().stream()
    unlimited.reserve(10**5, 10**5)  # 0: no limit


def test_a_stream_over_its_pixel_rate_waits_for_it():
    clock = Clock()
    budget = DecodeBudget(max_pixel_rate=1000.0, clock=clock)
    share = budget.stream()
    for _ in range(10):  # 10 pictures of 300 pixels at once: a second's worth (1000) goes first
        share.pace(300, sleep=clock.sleep)
    # 3000 pixels at 1000/s with 1000 in hand: the last picture starts 1.7 s in (the 10th
    # needs the first nine's 2700 spent, less the second in hand).
    assert clock.now == pytest.approx(1.7, abs=0.06)
    assert max(clock.slept) <= 0.05 + 1e-9  # in slices: a stop is seen within 50 ms
    clock.now += 10.0  # idle: the bucket refills to one second (1000), no more
    before = clock.now
    share.pace(1500, sleep=clock.sleep)  # within the second in hand: at once, 500 in debt
    assert clock.now == before
    share.pace(100, sleep=clock.sleep)  # had 10 s refilled 10 s' worth, this would not wait
    assert clock.now - before == pytest.approx(0.5, abs=0.01)
    stopped = DecodeBudget(max_pixel_rate=1.0, clock=clock).stream(stopped=lambda: True)
    at = clock.now
    stopped.pace(10**6, sleep=clock.sleep)
    stopped.pace(10**6, sleep=clock.sleep)  # overspent, but stopped: returns at once
    assert clock.now == at


def test_all_streams_together_are_held_to_the_total_rate():
    clock = Clock()
    budget = DecodeBudget(max_pixel_rate=1000.0, total_pixel_rate=1000.0, clock=clock)
    first, second = budget.stream(name="a"), budget.stream(name="b")
    first.pace(1000, sleep=clock.sleep)  # the whole second of the total goes to the first stream
    second.pace(500, sleep=clock.sleep)  # its own bucket is full, the total is not: it waits for it
    assert clock.now == 0.0  # the total had exactly 1000 in hand: the first spend took it to 0
    second.pace(500, sleep=clock.sleep)  # now 500 in debt: half a second
    assert clock.now == pytest.approx(0.5, abs=0.01)


def test_a_stream_that_shrinks_is_never_refused():
    budget = DecodeBudget(max_pixels=1000)
    big, other = budget.stream(), budget.stream()
    big.reserve(40, 20)  # 800
    other.reserve(10, 20)  # 200: full
    big.reserve(20, 20)  # 400: gives back, never refused
    assert (budget.reserved, budget.streams) == (600, 2)
    with pytest.raises(MediaError):
        big.reserve(50, 20)  # 1000 + 200 > 1000: refused, and the 400 it held are kept
    assert (budget.reserved, big.pixels) == (600, 400)


def test_decode_threads_run_nicer_than_the_caller():
    if not hasattr(os, "setpriority"):
        pytest.skip("no thread priorities here")
    seen = {}

    def thread() -> None:
        lower_priority(3)
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join()
    assert seen["nice"] == min(19, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + 3)  # not ours


def test_a_video_over_the_budget_is_refused_before_a_picture_is_decoded():
    data = encode_video(moving_frames(30), fps=15, container="webm")  # 160x120
    budget = DecodeBudget(max_pixels=160 * 120 - 1)
    frames, reports, decoder = _decode_chunks(data, budget=budget)
    assert frames == [] and decoder.failed and [code for code, _ in reports] == ["decoder_busy"]
    assert budget.reserved == 0
    budget = DecodeBudget(max_pixels=160 * 120)
    frames, reports, decoder = _decode_chunks(data, budget=budget)
    assert len(frames) == 10 and reports == [] and budget.reserved == 0  # given back at the end


@pytest.mark.service
def test_a_refused_stream_gets_decoder_busy_and_decodes_once_there_is_room(plumbing_weights):
    """Two sessions stream 160x120 video into a server that decodes one such stream at a time:
    the second hears ``decoder_busy`` (its socket stays open), and once the first stream is over,
    the second's next stream is decoded and labelled."""
    video = encode_video(moving_frames(40), fps=10, container="webm")
    with run_server(max_backlog=64, decode_budget_pixels=int(1.5 * 160 * 120)) as server:
        first, second = server.create(), server.create()

        async def run():
            async with connect(stream_url(server, first)) as ws1, connect(stream_url(server, second)) as ws2:
                await ws1.recv(), await ws2.recv()
                await ws1.send(video[: len(video) // 2])  # the first stream is open, being decoded
                first_results = []
                while not first_results:
                    first_results += results_of([json.loads(await asyncio.wait_for(ws1.recv(), 30))])
                gauge = _metric(server, "movinet_decode_pixels")
                await ws2.send(video)
                refusal = json.loads(await asyncio.wait_for(ws2.recv(), 30))
                await ws1.send(video[len(video) // 2 :])
                await ws1.send(json.dumps({"type": "eos"}))
                async for raw in ws1:
                    first_results += results_of([json.loads(raw)])
                await ws2.send(json.dumps({"type": "start"}))  # a new stream, now that there is room
                await ws2.send(video)
                await ws2.send(json.dumps({"type": "eos"}))
                second_results = [m for m in map(json.loads, [raw async for raw in ws2]) if m["type"] == "result"]
                return gauge, refusal, first_results, second_results

        gauge, refusal, first_results, second_results = asyncio.run(run())
        after = _metric(server, "movinet_decode_pixels")
    assert gauge == 160 * 120 and after == 0
    assert refusal["type"] == "error" and refusal["code"] == "decoder_busy", refusal
    assert [r["frame_index"] for r in first_results] == list(range(20))  # 4 s at 5 fps
    assert [r["frame_index"] for r in second_results] == list(range(20))


def _metric(server, name: str) -> float:
    for line in httpx.get(server.http + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")
