"""Synthetic folder data: diagonal pans move the right way, clips are deterministic, folders hold real videos."""

from __future__ import annotations

import av
import numpy as np
import pytest

from model.training.datasets.patterns import (
    CAMERA_MOTIONS,
    OBJECT_ACTIONS,
    PatternConfig,
    render_pattern,
    write_pattern_folder,
)

from .test_motion import phase_shift

SLOW = PatternConfig(width=96, height=96, fps=10.0, seconds=1.0, pan_speed=(0.3, 0.3))


@pytest.mark.parametrize(("name", "content"), [("pan up-left", (1, 1)), ("pan up-right", (-1, 1)),
                                               ("pan down-left", (1, -1)), ("pan down-right", (-1, -1))])
def test_diagonal_pans_move_the_content_against_the_camera(name, content):
    shifts = [phase_shift(clip[i], clip[i + 1]) for seed in range(3) for clip in [render_pattern(name, seed, SLOW)]
              for i in range(len(clip) - 1)]
    dx, dy = np.median(np.asarray(shifts), axis=0)
    assert np.sign(dx) == content[0] and np.sign(dy) == content[1] and abs(abs(dx) - abs(dy)) <= 1, (dx, dy)


@pytest.mark.parametrize("name", [*CAMERA_MOTIONS, *OBJECT_ACTIONS, "zoom in"])
def test_clips_are_deterministic_by_seed_and_move(name):
    config = PatternConfig(width=64, height=48, fps=5.0, seconds=1.2)
    clip = render_pattern(name, 3, config)
    assert clip.shape == (6, 48, 64, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, render_pattern(name, 3, config))
    assert not np.array_equal(clip, render_pattern(name, 4, config))
    assert np.abs(np.diff(clip.astype(np.int16), axis=0)).mean() > 1.0  # something moves


def test_unknown_pattern_is_refused():
    with pytest.raises(ValueError, match="unknown pattern"):
        render_pattern("moonwalk", 0)


def test_folder_mixes_codecs_sizes_and_frame_rates(tmp_path):
    cameras = ((64, 48, 15.0), (48, 48, 10.0), (80, 60, 12.0))
    paths = write_pattern_folder(tmp_path, ("orbit", "sway"), clips_per_class=6, seed=0, seconds=1.0, cameras=cameras)
    assert [p.relative_to(tmp_path).as_posix() for p in paths[:2]] == ["orbit/orbit_000.mp4", "orbit/orbit_001.webm"]
    seen = set()
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            seen.add((path.suffix, stream.codec_context.name, stream.width, stream.height, float(stream.average_rate)))
            assert sum(1 for _ in container.decode(stream)) == round(float(stream.average_rate))  # 1 s
    assert {s[:2] for s in seen} == {(".mp4", "h264"), (".webm", "vp8")}
    assert {s[2:] for s in seen} == set(cameras)
