"""Turning client bytes into model frames: decode, resample to the model's fps by pts, resize.

Everything here is blocking and runs in threads, never on the event loop:

* still images (JPEG, PNG, WebP; one per message): Pillow reads the header first, so an oversized
  frame is refused before it is decoded;
* video streams (WebM/Matroska, MP4 with ``moov`` first or fragmented MP4, raw H.264 Annex B):
  :class:`VideoStreamDecoder` feeds the chunks to PyAV's demuxer through a blocking file object
  in a thread of its own;
* :class:`Resampler` keeps one frame per slot of the model's frame grid by timestamps, not by
  arrival;
* :func:`fit_frame` resizes the short side to the model's size and crops the centre, as
  ``model.preprocess.preprocess_frames`` does, but in swscale and uint8.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from model.preprocess import TimestampResampler
from model.preprocess import fit_frame as model_fit_frame
from service.errors import MediaError

IMAGE_FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}


def sniff(data: bytes) -> str | None:
    """``"image"``, ``"video"`` or None from a message's first bytes."""
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n" or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return "image"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: WebM / Matroska
        return "video"
    if data[4:8] in (b"ftyp", b"moov", b"moof", b"styp", b"free", b"mdat"):  # ISO BMFF (MP4)
        return "video"
    if data[:4] == b"\x00\x00\x00\x01" or data[:3] == b"\x00\x00\x01":  # Annex B start code (H.264)
        return "video"
    return None


# --- resizing -------------------------------------------------------------------------------


def resized_dims(height: int, width: int, size: int, short_side: int | None = None) -> tuple[int, int]:
    """Short side to ``short_side`` (default ``size``), aspect kept: the rule of ``preprocess_frames``."""
    scale = (short_side or size) / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def _crop_centre(rgb: np.ndarray, size: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def fit_frame(frame: av.VideoFrame, size: int, short_side: int | None = None, exact: bool = True) -> np.ndarray:
    """A decoded frame → uint8 RGB ``size x size x 3``: short side to ``short_side``, centre crop.

    ``exact`` (the default) uses :func:`model.preprocess.fit_frame`, the function the model's
    evaluation uses too; ``exact=False`` does the same geometry in swscale (faster, within a few
    grey levels).
    """
    if exact:
        return model_fit_frame(frame.to_ndarray(format="rgb24"), size, short_side)
    new_h, new_w = resized_dims(frame.height, frame.width, size, short_side)
    # AREA when shrinking ~ the antialiased bilinear resize of preprocess_frames.
    interpolation = "AREA" if new_h < frame.height else "BILINEAR"
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24", interpolation=interpolation).to_ndarray()
    return _crop_centre(rgb, size)


# --- resampling by timestamps ------------------------------------------------------------------


# One implementation for the service and the model's evaluation (model/evaluate.py).
Resampler = TimestampResampler


# --- model frames out of the decoders -------------------------------------------------------


@dataclass
class Prepared:
    """A frame ready for the frame log (before it gets a seq)."""

    pts: float
    slot: int  # index on this input stream's model-frame grid
    rgb: np.ndarray  # uint8 (size, size, 3)
    decoded_at: float  # unix seconds


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise MediaError(
            "frame_too_large", f"frame {width}x{height} is over the limit of {max_pixels} pixels"
        )


def decode_image(data: bytes, max_pixels: int) -> av.VideoFrame:
    """One still image → an RGB frame. Raises :class:`MediaError` on bad or oversized input."""
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise MediaError("decode_error", f"cannot decode image: {exc}") from None
    if image.format not in IMAGE_FORMATS:
        raise MediaError("unsupported_format", f"image format {image.format} is not JPEG, PNG or WebP")
    check_pixels(image.width, image.height, max_pixels)  # before decoding the pixels
    try:
        rgb = np.asarray(image.convert("RGB"))
    except Exception as exc:
        raise MediaError("decode_error", f"cannot decode {image.format} image: {exc}") from None
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


class ImageStream:
    """Still images of one input stream.

    :meth:`plan` (cheap, on the event loop) places an image on the model's frame grid by its pts,
    so that images the resampling would skip are never decoded; :meth:`process` (in a thread)
    decodes and fits the ones that fill a slot.
    """

    def __init__(self, fps: float, size: int, max_pixels: int, short_side: int | None = None, exact: bool = False):
        self.resampler = Resampler(fps)
        self.size, self.short_side, self.max_pixels, self.exact = size, short_side, max_pixels, exact

    def plan(self, pts: float) -> list[int]:
        slots = self.resampler.push(pts)
        if slots is None:
            raise MediaError("late_frame", f"pts {pts} is before the previous frame's pts {self.resampler.last_pts}")
        return slots

    def process(self, data: bytes, pts: float, slots: list[int]) -> list[Prepared]:
        frame = decode_image(data, self.max_pixels)
        rgb = fit_frame(frame, self.size, self.short_side, self.exact)
        now = time.time()
        return [Prepared(pts=pts, slot=k, rgb=rgb, decoded_at=now) for k in slots]


class _ChunkReader(io.RawIOBase):
    """A blocking, non-seekable file object fed with chunks from another thread."""

    def __init__(self) -> None:
        self._chunks: queue.Queue[bytes | None] = queue.Queue()
        self._buffer = bytearray()
        self._eof = False
        self.pending = 0  # bytes fed and not yet read by the demuxer
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def feed(self, data: bytes | None) -> None:
        if data:
            with self._lock:
                self.pending += len(data)
        self._chunks.put(data)

    def readinto(self, buffer) -> int:  # noqa: ANN001 - memoryview from FFmpeg
        while not self._buffer and not self._eof:
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
            else:
                self._buffer += chunk
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        del self._buffer[:n]
        with self._lock:
            self.pending -= n
        return n

    def drain(self) -> None:
        """Discard input until EOF (used after a fatal error, so the feeder never blocks)."""
        while not self._eof:
            chunk = self._chunks.get()
            if chunk is None:
                self._eof = True
        self._buffer.clear()


class VideoStreamDecoder:
    """Incremental decoding of one video stream in its own thread.

    ``feed(chunk)`` from any thread; outputs go to ``emit(kind, payload)`` from the decoder thread:
    ``("frame", Prepared)``, ``("error", MediaError)`` (non-fatal: the stream goes on),
    ``("fatal", MediaError)`` (the stream is over, later chunks start a new one) and
    ``("end", frames_decoded)`` once, last.
    """

    def __init__(
        self,
        fps: float,
        size: int,
        max_pixels: int,
        emit: Callable[[str, object], None],
        *,
        stream_fps: float | None = None,
        short_side: int | None = None,
        exact: bool = False,
        name: str = "video-decoder",
    ):
        self.resampler = Resampler(fps)
        self.size, self.short_side, self.max_pixels, self.exact = size, short_side, max_pixels, exact
        self.stream_fps = stream_fps  # for streams without timestamps (raw H.264)
        self._emit = emit
        self._reader = _ChunkReader()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started_at: float | None = None
        self.frames_decoded = 0

    def start(self) -> None:
        self._thread.start()

    def feed(self, data: bytes) -> None:
        self._reader.feed(data)

    @property
    def buffered_bytes(self) -> int:
        return self._reader.pending

    def end(self) -> None:
        self._reader.feed(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _timestamp(self, frame: av.VideoFrame, index: int) -> float:
        if frame.pts is not None and frame.time_base is not None:
            return float(frame.pts * frame.time_base)
        if self.stream_fps:
            return index / self.stream_fps
        # No timestamps and no declared rate: arrival time is all there is.
        now = time.monotonic()
        if self._started_at is None:
            self._started_at = now
        return now - self._started_at

    def _run(self) -> None:
        try:
            self._decode()
        except MediaError as exc:
            self._emit("fatal", exc)
        except av.error.FFmpegError as exc:
            self._emit("fatal", MediaError(
                "decode_error", f"cannot demux video stream: {exc} (MP4 must be fragmented or have its "
                "moov atom first; WebM, Matroska and raw H.264 stream as they are)"))
        except Exception as exc:  # never let a decoder thread die silently
            self._emit("fatal", MediaError("decode_error", f"video decoder failed: {exc!r}"))
        finally:
            self._reader.drain()
            self._emit("end", self.frames_decoded)

    def _decode(self) -> None:
        options = {"probesize": "65536", "analyzeduration": "0"}
        with av.open(self._reader, mode="r", options=options) as container:
            if not container.streams.video:
                raise MediaError("unsupported_codec", "the stream has no video track")
            stream = container.streams.video[0]
            if stream.codec_context is None or stream.codec_context.name is None:
                raise MediaError("unsupported_codec", "the video codec is not supported")
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = 2
            errors_reported = 0
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.FFmpegError as exc:
                    if errors_reported < 3:  # a corrupt packet: tell the client, keep decoding
                        self._emit("error", MediaError("decode_error", f"corrupt video packet: {exc}"))
                        errors_reported += 1
                    continue
                for frame in frames:
                    self._on_frame(frame)

    def _on_frame(self, frame: av.VideoFrame) -> None:
        index = self.frames_decoded
        self.frames_decoded += 1
        check_pixels(frame.width, frame.height, self.max_pixels)  # fatal for this stream
        slots = self.resampler.push(self._timestamp(frame, index))
        if not slots:
            return  # decimated (or a late frame)
        pts = self.resampler.last_pts
        rgb = fit_frame(frame, self.size, self.short_side, self.exact)
        now = time.time()
        for k in slots:
            self._emit("frame", Prepared(pts=pts, slot=k, rgb=rgb, decoded_at=now))
