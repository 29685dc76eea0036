"""Decoding, resampling by timestamps and resizing, without a server: the decoder thread runs
into a real FramePipe and FrameSink on the in-memory store."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from service.errors import MediaError
from service.sources.decode import VideoStreamDecoder, decode_image, decode_jpeg, sniff
from service.sources.frames import Resampler, fit_frame, resized_dims
from tests.service.conftest import encode_video, jpeg, moving_frames
from tests.service.pipeline import pipeline


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


MEDIA = Path(__file__).resolve().parents[3] / "shared" / "media"  # real camera clips, beside the project


def _jpeg(rgb: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _pillow(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize("options", [{"quality": 90}, {"quality": 30}, {"quality": 100, "subsampling": 0},
                                     {"quality": 85, "subsampling": 1}, {"quality": 80, "progressive": True},
                                     {"quality": 75, "optimize": True}])
def test_jpeg_frames_decode_to_the_pixels_pillow_gives(options):
    """decode_image's libjpeg-turbo path (simplejpeg) against Pillow on real video frames, in the
    encodings browsers and cameras use: the same uint8 pixels, not merely close ones."""
    frames = _video_frames(ROOT_VIDEO, 6)
    if MEDIA.is_dir():
        frames += _video_frames(sorted(MEDIA.glob("*.mp4"))[0], 3)
    for rgb in frames:
        data = _jpeg(rgb, **options)
        assert decode_jpeg(data, 10**8) is not None  # the fast path took it
        decoded = decode_image(data, 10**8)
        assert decoded.dtype == np.uint8 and decoded.shape == rgb.shape
        assert np.array_equal(decoded, _pillow(data))


def test_jpegs_the_fast_path_does_not_take_still_decode_or_fail_clearly():
    rgb = _video_frames(ROOT_VIDEO, 1)[0]
    gray = _jpeg(rgb[..., 0])
    assert np.array_equal(decode_image(gray, 10**8), _pillow(gray))  # grey: three equal channels
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG")  # CMYK: Pillow converts it
    cmyk = buffer.getvalue()
    assert decode_jpeg(cmyk, 10**8) is None
    assert np.array_equal(decode_image(cmyk, 10**8), _pillow(cmyk))
    data = _jpeg(rgb)
    for broken in (data[: len(data) // 2], data[:200]):  # truncated mid-scan, truncated in the header
        with pytest.raises(MediaError) as error:
            decode_image(broken, 10**8)
        assert error.value.code == "decode_error"
    with pytest.raises(MediaError) as error:  # the header's size is checked before any pixel is decoded
        decode_image(_jpeg(np.zeros((1200, 1600, 3), np.uint8)), max_pixels=1000 * 1000)
    assert error.value.code == "frame_too_large"


def test_a_long_thin_frame_is_refused_before_it_is_resized():
    """A 1 x 65,000 JPEG is 17 kB and far under the pixel limit, but resizing its short side to
    the model's size would make a 64 x 4-million picture: frame_too_large, at once, whether it
    comes as a still image or as a decoded video picture; 8:1 is still a frame."""
    import time

    from service.sources.decode import image_work

    thin = _jpeg(np.full((1, 65000, 3), 128, np.uint8))
    started = time.perf_counter()
    with pytest.raises(MediaError) as error:
        image_work(thin, 10**8, 64, None, True)()
    assert error.value.code == "frame_too_large" and "8 times" in error.value.message
    assert time.perf_counter() - started < 1.0  # refused, not resized
    picture = av.VideoFrame.from_ndarray(np.zeros((16, 200, 3), np.uint8), format="rgb24")  # 12.5:1
    for exact in (True, False):
        with pytest.raises(MediaError) as error:
            fit_frame(picture, 64, exact=exact)
        assert error.value.code == "frame_too_large"
    wide = fit_frame(np.zeros((40, 320, 3), np.uint8), 64)  # 8:1
    assert wide.shape == (64, 64, 3)


ROOT_VIDEO = Path(__file__).resolve().parents[1] / "assets" / "motion_test.mp4"


def _video_frames(path: Path, count: int) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(count * 10), container.decode(video=0))]
    return frames[::10]


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


def _decode_chunks(data: bytes, chunk: int = 1000, max_pixels: int = 10**8, **kwargs):
    """Feed ``data`` to a decoder thread; the frames the store logged and the errors reported."""

    async def scenario():
        async with pipeline() as (sink, store, reports):
            from service.sources.pipe import FramePipe

            pipe = FramePipe(sink, "video", capacity=4, overflow="block")
            decoder = VideoStreamDecoder(pipe, 5.0, 64, max_pixels, short_side=72, **kwargs)
            decoder.start()
            for i in range(0, len(data), chunk):
                decoder.feed(data[i : i + chunk])
            decoder.end()
            await asyncio.wait_for(pipe.wait_ended(), 20)
            return await store.streams.frames_after(sink.session_id, 0), reports, decoder

    return asyncio.run(scenario())


@pytest.mark.parametrize("container", ["webm", "fmp4"])
def test_video_decoder_resamples_containers_by_pts(container):
    frames, reports, decoder = _decode_chunks(encode_video(moving_frames(30), fps=15, container=container))
    assert [f.frame_index for f in frames] == list(range(10))
    assert [f.pts for f in frames] == pytest.approx([k / 5 for k in range(10)])
    assert (frames[0].height, frames[0].width) == (64, 64) and reports == [] and not decoder.failed


def test_video_decoder_times_raw_h264_by_declared_rate_and_rejects_large_frames():
    data = encode_video(moving_frames(20), fps=10, container="h264")
    frames, _, _ = _decode_chunks(data, stream_fps=10)
    assert [f.pts for f in frames] == pytest.approx([k / 5 for k in range(10)])
    frames, reports, decoder = _decode_chunks(data, max_pixels=100 * 100)
    assert frames == [] and decoder.failed
    assert [code for code, _ in reports] == ["frame_too_large"]


def test_video_decoder_refuses_a_huge_declared_size_before_decoding():
    """A WebM whose track header declares 16000x16000 is refused from the header: no picture of
    that size is ever allocated (checked on the coded size the demuxer parsed)."""
    data = encode_video(moving_frames(6), fps=5, container="webm")
    frames, reports, decoder = _decode_chunks(data, max_pixels=32 * 32)
    assert frames == [] and decoder.failed and [code for code, _ in reports] == ["frame_too_large"]
