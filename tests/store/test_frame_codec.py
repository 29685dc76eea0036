"""The frame log's codecs (MOVINET_FRAME_CODEC): lossless ones give the pixels back, every one is
what a real ``redis-server`` holds, and take and replay read the same bytes."""

from __future__ import annotations

import time

import numpy as np
import pytest

from service.store import Frame, SessionRecord, keys
from service.store.frame_codec import CODECS, LOSSLESS, decode_frame, encode_frame
from service.store.redis import redis_store
from tests.store.test_contract import OPTIONS

SIZE = 48


def pixels(seed: int = 0) -> bytes:
    """A smooth picture with some noise (a camera frame, not white noise that no codec shrinks)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    base = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.int16)
    noise = np.random.default_rng(seed).integers(-6, 7, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8).tobytes()


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_gives_a_frame_of_the_size_back(codec):
    raw = pixels()
    data = encode_frame(raw, SIZE, SIZE, codec, quality=90)
    back = decode_frame(data, SIZE, SIZE, codec)
    assert len(back) == len(raw)
    if codec in LOSSLESS:
        assert back == raw
    else:
        assert back != raw and len(data) < len(raw) / 3
        error = np.abs(np.frombuffer(back, np.uint8).astype(int) - np.frombuffer(raw, np.uint8)).mean()
        assert error < 4, error  # a close picture, not noise


def test_a_bad_codec_or_a_frame_of_another_size_is_refused():
    with pytest.raises(ValueError):
        encode_frame(pixels(), SIZE, SIZE, "gif")
    with pytest.raises(ValueError):
        decode_frame(encode_frame(pixels(), SIZE, SIZE, "png"), SIZE, SIZE + 1, "png")
    with pytest.raises(ValueError):
        redis_store("redis://127.0.0.1:1/0", frame_codec="gif")


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def test_the_redis_log_holds_the_encoded_frame_and_take_and_replay_read_the_same(redis_server):
    redis_server.flush()
    store = redis_store(redis_server.url, frame_codec="jpeg", frame_quality=80)
    now = time.time()
    await store.sessions.create(SessionRecord(session_id="a", token_hash="h", model="m", weights="w",
                                              options=OPTIONS, created_at=now, idle_timeout_s=60,
                                              last_active_at=now))
    for i in range(3):
        await store.streams.append("a", Frame(pts=i / 5, frame_index=i, received_at=now, height=SIZE, width=SIZE,
                                              data=pixels(i)), keep=10)
    [entry_id, fields] = (await store.client.xrange(keys.frames("a"), count=1))[0]
    assert fields[b"c"] == b"jpeg" and len(fields[b"data"]) < SIZE * SIZE * 3 / 3  # what Redis holds
    [lease] = await store.streams.claim("w", 1, 60_000)
    taken = await store.streams.take_next({"a": (lease, 0)}, 0)
    replayed = await store.streams.frames_after("a", 0)
    assert taken["a"].codec == replayed[0].codec == "jpeg" and taken["a"].data == replayed[0].data
    assert [f.seq for f in replayed] == [1, 2, 3]
    assert len(decode_frame(replayed[0].data, SIZE, SIZE, replayed[0].codec)) == SIZE * SIZE * 3
    await store.close()
