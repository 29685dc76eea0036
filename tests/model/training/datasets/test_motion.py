"""Synthetic camera-motion data: determinism, splits, physically right motion, continuity, video files."""

from __future__ import annotations

import importlib.util
import itertools
import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from model.training.datasets.motion import (
    CLASS_INDEX,
    CLASSES,
    HELDOUT_PHOTOS,
    PHOTO_FILES,
    PROCEDURAL,
    TRAIN_PHOTOS,
    MotionConfig,
    MotionDataset,
    clip_seed,
    clip_source,
    iter_sequence,
    photo,
    random_segments,
    render_clip,
    render_sequence,
    segment_frames,
)

REPO = Path(__file__).resolve().parents[4]
ASSETS = REPO / "tests" / "assets"
CLEAN = MotionConfig().without_nuisances()


# ----------------------------------------------------------------------------- motion estimators


def gray(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float64).mean(axis=-1)


def phase_shift(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """Integer (dx, dy) such that ``after(x) ~ before(x - d)``: where the content went."""
    a, b = gray(before), gray(after)
    window = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * window)
    fb = np.fft.fft2((b - b.mean()) * window)
    cross = fb * np.conj(fa)
    surface = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    dy, dx = np.unravel_index(np.argmax(surface), surface.shape)
    height, width = a.shape
    return int(dx - width if dx > width // 2 else dx), int(dy - height if dy > height // 2 else dy)


def _best_warp(before: np.ndarray, after: np.ndarray, candidates: np.ndarray, warp) -> float:
    """The candidate whose warp of ``before`` best matches ``after`` on a central disc."""
    source = Image.fromarray(gray(before).astype(np.float32))
    target = gray(after)
    height, width = target.shape
    ys, xs = np.mgrid[0:height, 0:width]
    disc = (xs - width / 2) ** 2 + (ys - height / 2) ** 2 < (0.35 * min(height, width)) ** 2
    errors = [np.abs(np.asarray(warp(source, c)) - target)[disc].mean() for c in candidates]
    return float(candidates[int(np.argmin(errors))])


def rotation_deg(before: np.ndarray, after: np.ndarray) -> float:
    """Counter-clockwise on-screen rotation of the content (PIL's ``rotate`` convention)."""
    return _best_warp(
        before,
        after,
        np.linspace(-15, 15, 61),
        lambda image, angle: image.rotate(angle, resample=Image.BILINEAR),
    )


def scale_factor(before: np.ndarray, after: np.ndarray) -> float:
    """How much the content grew about the centre (> 1: it got bigger)."""

    def zoom(image: Image.Image, k: float) -> Image.Image:
        cx, cy = image.size[0] / 2, image.size[1] / 2
        return image.transform(
            image.size, Image.AFFINE, (1 / k, 0, cx - cx / k, 0, 1 / k, cy - cy / k), Image.BILINEAR
        )

    return _best_warp(before, after, np.exp(np.linspace(-0.2, 0.2, 41)), zoom)


# ----------------------------------------------------------------------------- determinism, dataset


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    config = replace(MotionConfig(), jpeg_prob=1.0, max_distractors=3)  # every nuisance switched on
    first = render_clip("pan left", 7, config)
    assert first.shape == (16, 112, 112, 3) and first.dtype == np.uint8
    assert first.tobytes() == render_clip("pan left", 7, config).tobytes()
    assert not np.array_equal(first, render_clip("pan left", 8, config))


def test_heldout_split_changes_the_stream_for_the_same_seed():
    train = render_clip(0, 5, MotionConfig())
    heldout = render_clip(0, 5, MotionConfig(split="heldout"))
    assert not np.array_equal(train, heldout)


def test_dataset_labels_are_balanced_and_items_match_render_clip():
    dataset = MotionDataset(MotionConfig(frames=4, size=32), num_clips=30, seed=3)
    assert np.bincount(dataset.labels, minlength=len(CLASSES)).tolist() == [3] * len(CLASSES)
    assert not np.array_equal(dataset.labels, np.arange(30) % len(CLASSES))  # shuffled, not cyclic

    clip, label = dataset[4]
    assert clip.dtype == torch.uint8 and clip.shape == (4, 32, 32, 3)
    assert np.array_equal(clip.numpy(), render_clip(label, clip_seed(3, 4), dataset.config))

    floats = MotionDataset(dataset.config, num_clips=30, seed=3, as_float=True)
    tensor, same_label = floats[4]
    assert same_label == label and tensor.dtype == torch.float32 and tensor.shape == (3, 4, 32, 32)
    assert torch.allclose(tensor, clip.permute(3, 0, 1, 2).float() / 255)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_train_and_heldout_photographs_are_disjoint():
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    assert set(TRAIN_PHOTOS) | set(HELDOUT_PHOTOS) == set(PHOTO_FILES)
    # Different names could still be the same picture (skimage's cat is chelsea): compare pixels.
    fingerprints = {
        name: np.asarray(Image.fromarray(photo(name)).resize((16, 16)), np.float64) for name in PHOTO_FILES
    }
    for train, heldout in itertools.product(TRAIN_PHOTOS, HELDOUT_PHOTOS):
        assert np.abs(fingerprints[train] - fingerprints[heldout]).mean() > 10, (train, heldout)

    heldout_config = MotionConfig(split="heldout")
    assert {clip_source(seed, heldout_config) for seed in range(60)} <= set(HELDOUT_PHOTOS) | {PROCEDURAL}
    assert {clip_source(seed, MotionConfig()) for seed in range(60)} <= set(TRAIN_PHOTOS) | {PROCEDURAL}


# ----------------------------------------------------------------------------- physics


@pytest.mark.parametrize(
    ("name", "direction"),
    [("pan left", (1, 0)), ("pan right", (-1, 0)), ("tilt up", (0, 1)), ("tilt down", (0, -1))],
)
@pytest.mark.parametrize("source", ["astronaut", "gravel", PROCEDURAL])
def test_pans_and_tilts_move_the_content_the_documented_way(name, direction, source):
    clip = render_clip(name, 11, replace(CLEAN, source=source))
    shifts = np.array([phase_shift(clip[i], clip[i + 1]) for i in range(0, 15, 2)])
    along = shifts @ np.array(direction)
    across = shifts @ np.array(direction[::-1])
    assert np.all(along >= 2), shifts  # at least 2 px per frame: visible at 8 fps
    assert np.all(np.abs(across) < along), shifts


@pytest.mark.parametrize(("name", "grows"), [("zoom in", True), ("zoom out", False)])
def test_zooms_scale_the_content_about_the_centre(name, grows):
    clip = render_clip(name, 12, replace(CLEAN, source="chelsea"))
    factors = [scale_factor(clip[i], clip[i + 1]) for i in (0, 7, 14)]
    assert all((f > 1.02) if grows else (f < 0.98) for f in factors), factors
    assert np.abs(phase_shift(clip[0], clip[1])).max() <= 2  # no pan hiding in the zoom


@pytest.mark.parametrize(
    ("name", "content_ccw"), [("rotate clockwise", True), ("rotate counter-clockwise", False)]
)
def test_camera_roll_turns_the_content_the_opposite_way(name, content_ccw):
    # Camera rolls clockwise -> the picture turns counter-clockwise on screen, and vice versa.
    clip = render_clip(name, 13, replace(CLEAN, source="motorcycle_left", rotate_speed_deg=(40.0, 40.0)))
    angles = [rotation_deg(clip[i], clip[i + 1]) for i in (0, 7, 14)]
    assert all(4.0 <= (a if content_ccw else -a) <= 6.0 for a in angles), angles  # 40 deg/s at 8 fps = 5


def test_static_is_still_and_shake_goes_nowhere():
    static = render_clip("static", 14, CLEAN)
    assert all(phase_shift(static[0], frame) == (0, 0) for frame in static[1:])

    shake = render_clip("shake", 14, replace(CLEAN, source="gravel"))
    steps = np.array([phase_shift(shake[i], shake[i + 1]) for i in range(15)])
    path = np.abs(steps).sum()
    assert path >= 15  # it moves ...
    assert np.abs(steps.sum(axis=0)).max() < 0.35 * path  # ... but back and forth


def test_speeds_are_in_real_units_across_fps_and_size():
    config = replace(CLEAN, source="astronaut", pan_speed=(0.3, 0.3), frames=9)
    slow = render_clip("pan left", 15, config)  # 8 fps: frame 8 is t = 1 s
    fast = render_clip("pan left", 15, replace(config, fps=24.0, frames=25))  # frame 24 is t = 1 s
    big = render_clip("pan left", 15, replace(config, size=224))
    expected = 0.3 * 112
    assert abs(phase_shift(slow[0], slow[8])[0] - expected) <= 1
    assert abs(phase_shift(fast[0], fast[24])[0] - expected) <= 1
    assert abs(phase_shift(big[0], big[8])[0] - 2 * expected) <= 2


# ----------------------------------------------------------------------------- sequences


def test_render_sequence_labels_follow_segments_without_jumps():
    segments = [("pan left", 1.5), ("zoom in", 1.0), ("rotate clockwise", 1.25), ("tilt down", 1.0)]
    frames, labels = render_sequence(segments, 21, replace(CLEAN, source="coffee"))
    bounds = segment_frames(segments, CLEAN.fps)
    assert bounds == [(0, 12), (12, 20), (20, 30), (30, 38)]
    assert frames.shape == (38, 112, 112, 3)
    expected = np.concatenate(
        [
            np.full(end - start, CLASS_INDEX[name])
            for (name, _), (start, end) in zip(segments, bounds, strict=True)
        ]
    )
    assert np.array_equal(labels, expected)

    steps = np.abs(np.diff(frames.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))
    boundary = np.array([start - 1 for start, _ in bounds[1:]])  # step from the last frame of a segment
    within = np.delete(steps, boundary)
    assert steps[boundary].max() <= 1.5 * np.percentile(within, 90), (steps[boundary], within)
    unrelated = np.abs(frames[0].astype(np.float64) - render_clip(0, 99, CLEAN)[0]).mean()
    assert steps.max() < 0.6 * unrelated  # a cut would look like this


def test_iter_sequence_streams_endless_segments_lazily():
    endless = itertools.cycle([("pan right", 0.5), ("static", 0.25)])
    head = list(itertools.islice(iter_sequence(endless, 4, MotionConfig(size=32)), 20))
    assert [label for _, label in head] == ([2] * 4 + [0] * 2) * 3 + [2] * 2
    assert all(frame.shape == (32, 32, 3) and frame.dtype == np.uint8 for frame, _ in head)


def test_random_segments_fill_the_duration():
    program = random_segments(5, 600.0)
    assert abs(sum(seconds for _, seconds in program) - 600.0) < 1e-6
    assert len({label for label, _ in program}) == len(CLASSES)
    assert program == random_segments(5, 600.0)


# ----------------------------------------------------------------------------- video files


def load_tool():
    spec = importlib.util.spec_from_file_location("make_test_video", REPO / "tools" / "make_test_video.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_make_test_video_writes_mp4_y4m_and_ground_truth(tmp_path):
    out, y4m = tmp_path / "clip.mp4", tmp_path / "clip.y4m"
    truth = load_tool().main(
        [
            str(out),
            "--segments",
            "pan left:0.6,zoom in:0.64",
            "--fps",
            "25",
            "--size",
            "320x240",
            "--seed",
            "1",
            "--y4m",
            str(y4m),
        ]
    )
    assert truth == json.loads(out.with_suffix(".json").read_text())
    assert truth["fps"] == 25 and truth["size"] == [320, 240] and truth["classes"] == list(CLASSES)
    assert truth["source"] in HELDOUT_PHOTOS + (PROCEDURAL,)
    assert [(s["name"], s["start_frame"], s["end_frame"]) for s in truth["segments"]] == [
        ("pan left", 0, 15),
        ("zoom in", 15, 31),
    ]
    assert truth["segments"][1]["start_s"] == 0.6 and truth["segments"][1]["end_s"] == 1.24
    assert truth["frame_labels"] == [1] * 15 + [5] * 16

    frames = decode(out)
    assert len(frames) == 31 and frames[0].shape == (240, 320, 3)
    with out.open("rb") as handle:
        assert handle.read(12)[4:8] == b"ftyp"
    assert y4m.read_bytes()[:64].startswith(b"YUV4MPEG2 W320 H240 F25:1")
    assert len(decode(y4m)) == 31


def test_committed_test_video_matches_its_ground_truth():
    truth = json.loads((ASSETS / "motion_test.json").read_text())
    frames = decode(ASSETS / truth["video"])
    assert (ASSETS / truth["video"]).stat().st_size < 2_000_000
    assert len(frames) == truth["num_frames"] == len(truth["frame_labels"]) == 400
    assert frames[0].shape == (240, 320, 3) and truth["fps"] == 25
    assert truth["source"] in HELDOUT_PHOTOS

    # The decoded H.264 shows the motion the json names (estimated on the centre, 5 frames apart).
    segments = {segment["name"]: segment for segment in truth["segments"]}
    assert set(segments) == {"pan left", "zoom in", "rotate clockwise", "tilt up"}

    def pairs(name):
        start, end = segments[name]["start_frame"], segments[name]["end_frame"]
        return [
            (frames[i][40:200, 80:240], frames[i + 5][40:200, 80:240]) for i in range(start + 5, end - 5, 30)
        ]

    assert all(phase_shift(a, b)[0] > 2 for a, b in pairs("pan left"))
    assert all(phase_shift(a, b)[1] > 2 for a, b in pairs("tilt up"))
    assert all(scale_factor(a, b) > 1.02 for a, b in pairs("zoom in"))
    assert all(rotation_deg(a, b) > 1.0 for a, b in pairs("rotate clockwise"))
    for segment in truth["segments"]:
        labels = truth["frame_labels"][segment["start_frame"] : segment["end_frame"]]
        assert labels == [segment["label"]] * (segment["end_frame"] - segment["start_frame"])
