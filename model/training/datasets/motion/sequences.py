"""Clips and continuous videos of labelled segments, the public rendering functions.

:func:`render_sequence` / :func:`iter_sequence` carry the camera pose from one segment to the
next, so only the motion changes at a boundary. Frame ``i`` shows the pose at ``t = i / fps``;
segment ``j`` spans frames ``[round(start_j * fps), round(end_j * fps))`` (``start_j``, ``end_j`` in
requested seconds since the start) and drives the motion over that time. :func:`random_segments`
writes a random program of segments for long test videos.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .config import CLASS_INDEX, NUM_CLASSES, FloatRange, MotionConfig, parse_label
from .render import SequenceRenderer


def render_clip(label: int | str, seed: int, config: MotionConfig = MotionConfig()) -> np.ndarray:
    """One clip of ``config.frames`` frames showing class ``label``: uint8 ``[T, H, W, 3]``."""
    renderer = SequenceRenderer(seed, config)
    renderer.begin(parse_label(label), config.frames / config.fps)
    frames = np.empty((config.frames, config.height, config.width, 3), dtype=np.uint8)
    for index in range(config.frames):
        frames[index], _ = renderer.next_frame()
    return frames


def iter_sequence(
    segments: Iterable[tuple[int | str, float]], seed: int, config: MotionConfig = MotionConfig()
) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(frame, label)`` for a continuous video made of ``(label, seconds)`` segments.

    Frames are produced one at a time, so an endless iterable of segments gives an endless video in
    constant memory. When ``segments`` is a sequence, zoom rates plan ahead so later zooms have room.
    """
    planned = list(segments) if isinstance(segments, Sequence) else None
    renderer = SequenceRenderer(seed, config)
    parsed = ((parse_label(label), float(seconds)) for label, seconds in (planned or segments))
    for index, (label, seconds) in enumerate(parsed):
        future = [(parse_label(lb), float(s)) for lb, s in planned[index + 1 :]] if planned else ()
        segment = renderer.begin(label, seconds, future)
        for _ in range(segment.end_frame - segment.start_frame):
            yield renderer.next_frame()


def render_sequence(
    segments: Sequence[tuple[int | str, float]], seed: int, config: MotionConfig = MotionConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """A continuous video whose motion changes at every segment: ``(frames [N,H,W,3], labels [N])``."""
    if not segments:
        raise ValueError("need at least one (label, seconds) segment")
    frames, labels = [], []
    for frame, label in iter_sequence(list(segments), seed, config):
        frames.append(frame)
        labels.append(label)
    return np.stack(frames), np.asarray(labels, dtype=np.int64)


def segment_frames(segments: Sequence[tuple[int | str, float]], fps: float) -> list[tuple[int, int]]:
    """``(start_frame, end_frame)`` of each segment, exactly as the renderer lays them out."""
    bounds, start, clock = [], 0, 0.0
    for _, seconds in segments:
        clock += float(seconds)
        end = max(int(round(clock * fps)), start + 1)
        bounds.append((start, end))
        start = end
    return bounds


def random_segments(
    seed: int,
    duration_s: float,
    seconds: FloatRange = (2.0, 5.0),
    classes: Sequence[int | str] | None = None,
    config: MotionConfig = MotionConfig(),
) -> list[tuple[int, float]]:
    """A random program of segments lasting ``duration_s`` (for long test videos).

    Zoom segments are capped at 3 s and their directions kept balanced, so a ten-minute program
    never asks the camera to zoom further than a photograph allows.
    """
    rng = np.random.default_rng([int(seed), 0x5E9_0E17])
    choices = [parse_label(c) for c in (classes if classes is not None else range(NUM_CLASSES))]
    zoom_in, zoom_out = CLASS_INDEX["zoom in"], CLASS_INDEX["zoom out"]
    program, total, zoom_level = [], 0.0, 0.0
    while total < duration_s - 1e-9:
        label = choices[int(rng.integers(len(choices)))]
        length = float(rng.uniform(*seconds))
        if label in (zoom_in, zoom_out):
            length = min(length, 3.0)
            step = config.zoom_rate[0] * length
            if label == zoom_in and zoom_level - step < -0.6 and zoom_out in choices:
                label = zoom_out
            elif label == zoom_out and zoom_level + step > 0.6 and zoom_in in choices:
                label = zoom_in
            zoom_level += step if label == zoom_out else -step
        length = round(min(length, duration_s - total), 3)
        if length <= 0:
            break
        program.append((label, length))
        total += length
    return program
