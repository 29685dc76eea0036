"""Datasets for training and evaluating the action models."""

from .motion import (
    CLASSES,
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    MotionConfig,
    MotionDataset,
    VideoWriter,
    iter_sequence,
    random_segments,
    render_clip,
    render_sequence,
    segment_frames,
    write_video,
)

__all__ = [
    "CLASSES",
    "HELDOUT_PHOTOS",
    "TRAIN_PHOTOS",
    "MotionConfig",
    "MotionDataset",
    "VideoWriter",
    "iter_sequence",
    "random_segments",
    "render_clip",
    "render_sequence",
    "segment_frames",
    "write_video",
]
