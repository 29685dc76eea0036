"""Decoding, resampling by timestamps and resizing, without a server."""

from __future__ import annotations

import io
import threading

import av
import numpy as np
import pytest
from PIL import Image

from service.errors import MediaError
from service.media import Resampler, VideoStreamDecoder, decode_image, fit_frame, resized_dims, sniff
from tests.service.conftest import encode_video, jpeg, moving_frames


def test_resampler_keeps_one_frame_per_model_slot_by_pts():
    resampler = Resampler(5.0)
    kept = [i for i in range(40) if resampler.push(i / 30)]  # 30 fps in
    assert kept == [0, 6, 12, 18, 24, 30, 36]
    jittered = Resampler(5.0)
    assert [jittered.push(t) for t in (10.0, 10.198, 10.2004, 10.41)] == [[0], [], [1], [2]]


def test_resampler_repeats_slow_input_skips_gaps_and_refuses_going_back():
    resampler = Resampler(5.0, max_gap_s=1.0)
    assert resampler.push(0.0) == [0]
    assert resampler.push(0.5) == [1, 2]  # 2 fps in: frames repeat to keep the time axis
    assert resampler.push(5.0) == [25]  # a 4.5 s gap is skipped, not filled
    assert resampler.push(4.0) is None


def test_sniff_tells_images_from_video_streams():
    frames = moving_frames(3)
    assert sniff(jpeg(frames[0])) == "image"
    buffer = io.BytesIO()
    Image.fromarray(frames[0]).save(buffer, "WEBP")
    assert sniff(buffer.getvalue()) == "image"
    assert sniff(encode_video(frames, 5, "webm")) == "video"
    assert sniff(encode_video(frames, 5, "fmp4")) == "video"
    assert sniff(encode_video(frames, 5, "h264")) == "video"
    assert sniff(b"hello world") is None


def test_decode_image_checks_size_before_decoding():
    buffer = io.BytesIO()
    Image.new("RGB", (3000, 3000)).save(buffer, "PNG")
    with pytest.raises(MediaError) as error:
        decode_image(buffer.getvalue(), max_pixels=1000 * 1000)
    assert error.value.code == "frame_too_large"
    with pytest.raises(MediaError) as error:
        decode_image(b"\xff\xd8\xff\xe0garbage", max_pixels=10**8)
    assert error.value.code == "decode_error"
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    with pytest.raises(MediaError) as error:
        decode_image(gif.getvalue(), max_pixels=10**8)
    assert error.value.code == "unsupported_format"


@pytest.mark.parametrize("height, width", [(240, 320), (480, 640), (1080, 1920), (200, 150)])
def test_fit_frame_matches_the_model_preprocessing(height, width):
    """swscale geometry == model.preprocess.preprocess_frames (short side, centre crop), nearly pixel for pixel."""
    rng = np.random.default_rng(0)
    block = max(8, height // 30)  # detail at a scale the model's input keeps
    smooth = np.kron(rng.integers(0, 255, (height // block + 1, width // block + 1, 3)), np.ones((block, block, 1)))
    rgb = smooth[:height, :width].astype(np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    assert resized_dims(height, width, 172, 192) == (192, round(width * 192 / height)) if height < width else True
    fast = fit_frame(frame, 172, 192).astype(np.float32)
    exact = fit_frame(frame, 172, 192, exact=True).astype(np.float32)
    assert fast.shape == exact.shape == (172, 172, 3)
    assert np.abs(fast - exact).mean() < 4.0  # of 255: the same picture, filters differ slightly


def _decode_chunks(data: bytes, chunk: int = 1000, **kwargs):
    events, done = [], threading.Event()

    def emit(kind, payload):
        events.append((kind, payload))
        if kind == "end":
            done.set()

    decoder = VideoStreamDecoder(5.0, 64, 10**8, emit, short_side=72, **kwargs)
    decoder.start()
    for i in range(0, len(data), chunk):
        decoder.feed(data[i : i + chunk])
    decoder.end()
    assert done.wait(20)
    return events


@pytest.mark.parametrize("container", ["webm", "fmp4"])
def test_video_decoder_resamples_containers_by_pts(container):
    events = _decode_chunks(encode_video(moving_frames(30), fps=15, container=container))
    frames = [payload for kind, payload in events if kind == "frame"]
    assert [f.slot for f in frames] == list(range(10))
    assert [f.pts for f in frames] == pytest.approx([k / 5 for k in range(10)])
    assert frames[0].rgb.shape == (64, 64, 3) and events[-1] == ("end", 30)


def test_video_decoder_times_raw_h264_by_declared_rate_and_rejects_large_frames():
    data = encode_video(moving_frames(20), fps=10, container="h264")
    frames = [p for k, p in _decode_chunks(data, stream_fps=10) if k == "frame"]
    assert [f.pts for f in frames] == pytest.approx([k / 5 for k in range(10)])
    events: list = []
    decoder = VideoStreamDecoder(5.0, 64, 100 * 100, lambda k, p: events.append((k, p)))
    decoder.start()
    decoder.feed(data)
    decoder.end()
    decoder.join(10)
    assert events[0][0] == "fatal" and events[0][1].code == "frame_too_large"
    assert events[-1][0] == "end"
