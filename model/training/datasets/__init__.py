"""Data sets for training and evaluating the action models, and the video writer their tools use.

:mod:`.motion` is the synthetic camera-motion data set; :mod:`.video` writes frames to video files.
"""

from .motion import (
    CLASSES,
    HELDOUT_PHOTOS,
    TRAIN_PHOTOS,
    MotionConfig,
    MotionDataset,
    iter_sequence,
    random_segments,
    render_clip,
    render_sequence,
    segment_frames,
)
from .video import VideoWriter, write_video

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
