"""A session's ingest on the in-memory store, without a server: the WebSocket input adapter, its
pipe, the frame sink and what they count."""

from __future__ import annotations

import asyncio

import pytest

from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings
from service.sources.pipe import FramePipe, Pending
from service.sources.websocket import WebSocketInput
from tests.service.conftest import encode_video, jpeg, moving_frames
from tests.service.pipeline import pipeline, record

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def loaded():
    registry = ModelRegistry("movinet_test_stream", None, allow_random_weights=True, device="cpu", )
    return asyncio.run(registry.load("movinet_test_stream", "random"))


async def test_images_and_a_video_stream_continue_one_frame_grid(loaded):
    settings = Settings(max_frame_pixels=10**7)
    async with pipeline() as (sink, store, reports):
        source = WebSocketInput(record(), loaded, settings, sink, Metrics(), None)
        frames = moving_frames(6, seed=3)
        fps = loaded.frame_rate
        for i, frame in enumerate(frames[:3]):
            source.set_next_pts(i / fps)
            await source.on_binary(jpeg(frame), 0.0)
        await source.end_stream()
        video = encode_video(moving_frames(int(fps * 2), seed=4), fps=int(fps), container="webm")
        for i in range(0, len(video), 700):
            await source.on_binary(video[i : i + 700], 0.0)
        await source.end_stream()
        logged = await store.streams.frames_after(sink.session_id, 0, count=100)
        assert [f.frame_index for f in logged] == list(range(len(logged)))
        assert len(logged) == 3 + int(fps * 2) and reports == []
        got = await store.sessions.get(sink.session_id)
        assert got.frames_received == len(logged) and got.next_frame_index == len(logged)


async def test_bad_bytes_are_reported_and_counted_and_the_stream_goes_on(loaded):
    async with pipeline() as (sink, store, reports):
        source = WebSocketInput(record(input="images"), loaded, Settings(), sink, Metrics(), None)
        source.set_next_pts(0.0)
        await source.on_binary(b"hello, not an image", 0.0)
        source.set_next_pts(0.0)
        await source.on_binary(b"\xff\xd8\xff\xe0" + b"\x00" * 300, 0.0)  # a broken JPEG
        source.set_next_pts(1 / loaded.frame_rate)  # the next slot of the grid
        await source.on_binary(jpeg(moving_frames(1)[0]), 0.0)
        await source.end_stream()
        codes = [code for code, _ in reports]
        assert codes == ["unsupported_format", "decode_error"]
        assert all("0x" not in message and "Errno" not in message for _, message in reports)
        got = await store.sessions.get(sink.session_id)
        assert (got.frames_received, got.frames_dropped) == (1, 2)  # each refused image is a frame lost


async def test_a_full_pipe_drops_the_oldest_frame_or_blocks_its_thread():
    async with pipeline() as (sink, store, _):
        import numpy as np

        rgb = np.zeros((4, 4, 3), np.uint8)
        pipe = FramePipe(sink, "test", capacity=2)
        for k in range(5):  # the task has not run yet: 3 of 5 are pushed out, oldest first
            pipe.put(Pending(pts=k / 5, slots=[k], arrived_at=0.0, rgb=rgb))
        pipe.end()
        await pipe.wait_ended()
        logged = await store.streams.frames_after(sink.session_id, 0)
        assert [f.frame_index for f in logged] == [3, 4]
        assert (await store.sessions.get(sink.session_id)).frames_dropped == 3

        blocking = FramePipe(sink, "test", capacity=1, overflow="block")
        done = asyncio.get_running_loop().run_in_executor(
            None, lambda: [blocking.put(Pending(pts=k, slots=[10 + k], arrived_at=0.0, rgb=rgb)) for k in range(4)])
        assert await asyncio.wait_for(done, 10) == [True] * 4
        blocking.end()
        await blocking.wait_ended()
        logged = await store.streams.frames_after(sink.session_id, 0)
        assert [f.frame_index for f in logged][-4:] == [10, 11, 12, 13]  # none dropped
        assert (await store.sessions.get(sink.session_id)).frames_dropped == 3


@pytest.mark.parametrize("failure", ["cluster", "fault"])
async def test_a_frame_the_store_call_fails_on_is_told_counted_and_the_stream_goes_on(failure, monkeypatch):
    """A Cluster client's own error (it could not map the cluster: RedisClusterException, no
    RedisError) is the store being away; any other exception is a fault of the server's. Either way
    the frame is counted as dropped, the client is told once, and the next frames are logged."""
    import numpy as np
    from redis.exceptions import SlotNotCoveredError

    async with pipeline() as (sink, store, reports):
        append = store.streams.append

        async def failing(session_id, frame, *, keep):
            if frame.frame_index in (1, 2):
                raise SlotNotCoveredError('Slot "7" not covered') if failure == "cluster" else RuntimeError("bug")
            return await append(session_id, frame, keep=keep)

        monkeypatch.setattr(store.streams, "append", failing)
        metrics = Metrics()
        sink.metrics = metrics
        pipe = FramePipe(sink, "test", capacity=8)
        rgb = np.zeros((4, 4, 3), np.uint8)
        for k in range(4):
            pipe.put(Pending(pts=k / 5, slots=[k], arrived_at=0.0, rgb=rgb))
        pipe.end()
        await pipe.wait_ended()
        logged = await store.streams.frames_after(sink.session_id, 0)
        assert [f.frame_index for f in logged] == [0, 3]
        code = "store_unavailable" if failure == "cluster" else "internal_error"
        assert [c for c, _ in reports] == [code]  # told once for the two frames
        assert all("bug" not in message and "Slot" not in message for _, message in reports)
        reason = "store" if failure == "cluster" else "error"
        assert metrics.frames_dropped.labels(reason)._value.get() == 2
        if failure == "fault":  # the store still counts what it could not log (it is there)
            assert (await store.sessions.get(sink.session_id)).frames_dropped == 2


@pytest.mark.parametrize("container", ["webm", "fmp4"])
async def test_a_second_file_without_a_start_between_is_a_new_stream_on_the_same_grid(loaded, container):
    """A client that sends one file after another on the socket, without ``start``: the second
    file's bytes went to the first one's demuxer, which dropped them without a word."""
    fps = int(loaded.frame_rate)
    videos = [encode_video(moving_frames(fps * 2, seed=seed), fps=fps, container=container) for seed in (5, 6)]
    async with pipeline() as (sink, store, reports):
        source = WebSocketInput(record(), loaded, Settings(max_frame_pixels=10**7), sink, Metrics(), None)
        for video in videos:
            for i in range(0, len(video), 900):
                await source.on_binary(video[i : i + 900], 0.0)
        await source.end_stream()
        logged = await store.streams.frames_after(sink.session_id, 0, count=100)
        assert reports == []
        assert len(logged) == 2 * 2 * fps
        assert [f.frame_index for f in logged] == list(range(len(logged)))
