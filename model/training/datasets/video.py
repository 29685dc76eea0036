"""Writing RGB frames to video files with PyAV: H.264 .mp4, VP8 .webm, .mkv, and raw .y4m.

Used by ``tools/make_test_video.py`` and the tests; nothing here is specific to the motion data.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class VideoFormat:
    container: str
    codecs: dict[str, str]  # user-facing codec name -> encoder
    default_codec: str
    options: dict[str, dict[str, str]] = field(default_factory=dict)  # per encoder


VIDEO_FORMATS: dict[str, VideoFormat] = {
    ".mp4": VideoFormat("mp4", {"h264": "libx264"}, "h264", {"libx264": {"crf": "23", "preset": "medium"}}),
    ".mkv": VideoFormat(
        "matroska",
        {"h264": "libx264", "vp8": "libvpx"},
        "h264",
        {
            "libx264": {"crf": "23", "preset": "medium"},
            "libvpx": {"crf": "10", "deadline": "good", "cpu-used": "4"},
        },
    ),
    ".webm": VideoFormat(
        "webm", {"vp8": "libvpx"}, "vp8", {"libvpx": {"crf": "10", "deadline": "good", "cpu-used": "4"}}
    ),
    # Raw YUV 4:2:0 in a y4m file: what Chromium's --use-file-for-fake-video-capture reads.
    ".y4m": VideoFormat("yuv4mpegpipe", {"rawvideo": "rawvideo"}, "rawvideo"),
}
# ``fast=True``: the encoders' real-time settings (larger files, several times faster), for
# generated data sets and tests.
FAST_OPTIONS: dict[str, dict[str, str]] = {
    "libx264": {"preset": "veryfast"},
    "libvpx": {"deadline": "realtime", "cpu-used": "8"},
}


class VideoWriter:
    """Encode RGB uint8 frames with PyAV; the container follows the suffix (.mp4, .webm, .mkv, .y4m)."""

    def __init__(
        self,
        path: str | Path,
        fps: float,
        width: int,
        height: int,
        codec: str | None = None,
        quality: int | None = None,
        bit_rate: int = 1_500_000,
        fast: bool = False,
    ) -> None:
        import av  # deferred: training never writes videos

        suffix = Path(path).suffix.lower()
        if suffix not in VIDEO_FORMATS:
            raise ValueError(f"unsupported video suffix {suffix!r}; use one of {sorted(VIDEO_FORMATS)}")
        video_format = VIDEO_FORMATS[suffix]
        codec = codec or video_format.default_codec
        if codec not in video_format.codecs:
            raise ValueError(f"{suffix} files take codec {sorted(video_format.codecs)}, not {codec!r}")
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
        encoder = video_format.codecs[codec]
        self.width, self.height = width, height
        self.rate = Fraction(fps).limit_denominator(1001)
        self._container = av.open(str(path), mode="w", format=video_format.container)
        options = dict(video_format.options.get(encoder, {}))
        if fast:
            options.update(FAST_OPTIONS.get(encoder, {}))
        if quality is not None and "crf" in options:
            options["crf"] = str(quality)
        self._stream = self._container.add_stream(encoder, rate=self.rate, options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        if encoder == "libvpx":
            self._stream.bit_rate = bit_rate  # libvpx treats crf as a cap under this rate
        self._frame_type = av.VideoFrame
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}"
            )
        video_frame = self._frame_type.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.rate
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str | None = None,
    quality: int | None = None,
    fast: bool = False,
) -> int:
    """Write RGB uint8 frames (an array or any iterable, consumed lazily); returns the frame count."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no frames to write")
    height, width = first.shape[:2]
    with VideoWriter(path, fps, width, height, codec=codec, quality=quality, fast=fast) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.frames_written
