"""A model frame before it is logged, and the two steps every source applies to get one.

* :class:`Resampler` keeps one frame per slot of the model's frame grid, by timestamps, not by
  arrival (the same :class:`model.preprocess.TimestampResampler` the model's evaluation uses);
* :func:`fit_frame` resizes the short side to the model's size and crops the centre, exactly as
  :func:`model.preprocess.fit_frame` by default (``exact=False``: the same geometry in swscale).

Blocking work: sources call :func:`fit_frame` in their decode thread or in the decode pool.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

from model.preprocess import TimestampResampler
from model.preprocess import fit_frame as model_fit_frame
from service.errors import MediaError

# One implementation for the service and the model's evaluation (model's evaluate).
Resampler = TimestampResampler


@dataclass
class Prepared:
    """A frame ready for the frame log (before it gets a seq)."""

    pts: float
    slot: int  # index on this input stream's model-frame grid
    rgb: np.ndarray  # uint8 (size, size, 3)
    decoded_at: float  # unix seconds


# Longest side over shortest a frame may have: the short side is resized to the model's size
# before the centre crop, so a 1 x 65,000 picture (17 kB as a JPEG, well under any pixel limit)
# would be resized to 64 x 4 million: seconds of a core and gigabytes of memory for one frame.
# Cameras are 4:3 to 32:9 (3.6); 8 leaves room for any of them.
MAX_ASPECT = 8.0


def check_aspect(width: int, height: int) -> None:
    """Refuse a frame too long and thin to resize (:data:`MAX_ASPECT`), before it is resized."""
    if min(width, height) <= 0 or max(width, height) > MAX_ASPECT * min(width, height):
        raise MediaError("frame_too_large", f"frame {width}x{height}: one side is over {MAX_ASPECT:g} times the "
                         "other (resizing it to the model's size would take too much memory)")


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse a frame over the pixel limit (before its pixels are decoded, where the format allows)."""
    if width * height > max_pixels:
        raise MediaError("frame_too_large", f"frame {width}x{height} is over the limit of {max_pixels} pixels")


def resized_dims(height: int, width: int, size: int, short_side: int | None = None) -> tuple[int, int]:
    """Short side to ``short_side`` (default ``size``), aspect kept: the rule of ``preprocess_frames``."""
    scale = (short_side or size) / min(height, width)
    return max(size, round(height * scale)), max(size, round(width * scale))


def _crop_centre(rgb: np.ndarray, size: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(rgb[top : top + size, left : left + size])


def fit_frame(frame: av.VideoFrame | np.ndarray, size: int, short_side: int | None = None,
              exact: bool = True) -> np.ndarray:
    """A decoded frame (PyAV frame or uint8 RGB array) → uint8 RGB ``size x size x 3``.

    ``exact`` (the default) uses :func:`model.preprocess.fit_frame`, the function the model's
    evaluation uses too; ``exact=False`` does the same geometry in swscale (faster, within a few
    grey levels). A frame over :data:`MAX_ASPECT` gets ``frame_too_large``.
    """
    height, width = frame.shape[:2] if isinstance(frame, np.ndarray) else (frame.height, frame.width)
    check_aspect(width, height)
    if isinstance(frame, np.ndarray):
        if exact:
            return model_fit_frame(frame, size, short_side)
        frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
    elif exact:
        return model_fit_frame(frame.to_ndarray(format="rgb24"), size, short_side)
    new_h, new_w = resized_dims(frame.height, frame.width, size, short_side)
    # AREA when shrinking ~ the antialiased bilinear resize of preprocess_frames.
    interpolation = "AREA" if new_h < frame.height else "BILINEAR"
    rgb = frame.reformat(width=new_w, height=new_h, format="rgb24", interpolation=interpolation).to_ndarray()
    return _crop_centre(rgb, size)
