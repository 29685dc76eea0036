"""How a logged model frame is stored: its pixels as uint8 RGB (``raw``) or as an image file.

The gateway's Redis store encodes each fitted model frame once, in the append
(:meth:`service.store.redis.RedisStreamLog.append`); the frame log keeps those bytes and names
their codec in the entry, and the worker decodes them in its inference thread
(:meth:`service.worker.runner.Runner.forward`) for the live forward and for a replay alike. Both
therefore see the same pixels, so a resumed session gives the labels of an uninterrupted run
whatever the codec; a lossy codec only changes what every run sees (its agreement with ``raw`` is
measured in docs/benchmarks.md). Pure functions, no I/O.
"""

from __future__ import annotations

import io
from typing import Literal, get_args

FrameCodec = Literal["raw", "png", "webp-lossless", "webp", "jpeg"]
CODECS: tuple[str, ...] = get_args(FrameCodec)
LOSSLESS = frozenset({"raw", "png", "webp-lossless"})


def encode_frame(pixels: bytes, height: int, width: int, codec: str, quality: int = 90) -> bytes:
    """``pixels`` (uint8 RGB ``height x width x 3``) in ``codec``; ``quality`` (1-100) for the lossy
    ones. PNG and lossless WebP give back the same bytes when decoded."""
    if codec == "raw":
        return pixels
    from PIL import Image

    if len(pixels) != height * width * 3:
        raise ValueError(f"{len(pixels)} bytes are not a {height}x{width} RGB frame")
    image = Image.frombytes("RGB", (width, height), pixels)
    out = io.BytesIO()
    if codec == "png":
        image.save(out, "PNG", compress_level=1)  # level 1: 6-9 save ~2 % more for 3-5x the time
    elif codec == "webp-lossless":
        image.save(out, "WEBP", lossless=True, quality=0, method=0)  # fastest effort (see frame_sizes)
    elif codec == "webp":
        image.save(out, "WEBP", quality=quality, method=0)
    elif codec == "jpeg":
        image.save(out, "JPEG", quality=quality)  # 4:2:0 chroma, baseline: what every decoder reads fast
    else:
        raise ValueError(f"unknown frame codec {codec!r} (one of {', '.join(CODECS)})")
    return out.getvalue()


def decode_frame(data: bytes, height: int, width: int, codec: str) -> bytes:
    """The uint8 RGB pixels of an encoded frame (``ValueError`` when they are not ``height x width``)."""
    if codec == "raw":
        return data
    if codec not in CODECS:
        raise ValueError(f"unknown frame codec {codec!r}")
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        if image.size != (width, height):
            raise ValueError(f"a {image.size[0]}x{image.size[1]} image for a {width}x{height} frame")
        return image.convert("RGB").tobytes()
