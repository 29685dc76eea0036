"""Frames: the view of a pose, distractors, the camera's look, and one continuous video.

What a clip contains: a photograph from the split's set (:data:`TRAIN_PHOTOS` or the disjoint
:data:`HELDOUT_PHOTOS`; flipped left-right half of the time by starting in the mirrored tile) or a
procedural texture; a random start pose (view 25-80 % of the picture, roll within +-15 degrees)
chosen on texture and so that the whole clip stays inside the picture when possible; the class
motion of :mod:`.camera`; 0-3 small shapes moving on their own; motion blur from 1-3 sub-frames;
brightness, contrast, white balance, luma noise and sometimes JPEG.
:meth:`MotionConfig.without_nuisances` turns all of that off except the motion.

This module owns the random streams a seed stands for (:func:`clip_source` names the picture a
seed films) and :class:`SequenceRenderer`, which renders one video frame by frame, carrying the
camera pose from one segment to the next.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from .camera import (
    Oscillator,
    Pose,
    Segment,
    SegmentMotion,
    draw_motion,
    limit_zoom,
    min_zoom_plan,
    zoom_excursion,
)
from .config import NUM_CLASSES, PROCEDURAL, FloatRange, MotionConfig
from .scenes import Plane, mirror, photo_plane, procedural_texture, random_colour

# Mixed into every seed so the held-out split never replays a training clip's random stream.
_SPLIT_ENTROPY = {"train": 0x5EED_0001, "heldout": 0x5EED_0002}
_TEXTURE_PROBE = 32
_TEXTURE_THRESHOLD = 5.0
_TEXTURE_TRIES = 6
_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.intp)  # rows of the flattened (3, 256) table


def _view_affine(pose: Pose, width: int, height: int, plane: Plane):
    """PIL affine coefficients (output pixel -> source pixel of the chosen mip level) and the level."""
    short = min(width, height)
    pixels_per_output = math.exp(pose.log_scale) / short
    level = min(max(int(round(math.log2(max(pixels_per_output, 1e-6)))), 0), len(plane.images) - 1)
    k = pixels_per_output / 2**level
    cos, sin = math.cos(pose.angle), math.sin(pose.angle)
    m00, m01, m10, m11 = k * cos, -k * sin, k * sin, k * cos
    ox = pose.x / 2**level - (m00 * width + m01 * height) / 2
    oy = pose.y / 2**level - (m10 * width + m11 * height) / 2
    return (m00, m01, ox, m10, m11, oy), level


def _render_view(plane: Plane, pose: Pose, width: int, height: int) -> Image.Image:
    (m00, m01, ox, m10, m11, oy), level = _view_affine(pose, width, height, plane)
    corners_x = [ox + m00 * u + m01 * v for u, v in ((0, 0), (width, 0), (0, height), (width, height))]
    corners_y = [oy + m10 * u + m11 * v for u, v in ((0, 0), (width, 0), (0, height), (width, height))]
    x0, x1 = math.floor(min(corners_x)) - 1, math.ceil(max(corners_x)) + 2
    y0, y1 = math.floor(min(corners_y)) - 1, math.ceil(max(corners_y)) + 2
    source = plane.images[level]
    level_w, level_h = source.size
    tile_x, tile_y = x0 // level_w, y0 // level_h
    if x1 <= (tile_x + 1) * level_w and y1 <= (tile_y + 1) * level_h:
        # Inside one mirror tile: fold the tile onto the picture by flipping the affine map.
        if tile_x % 2:
            m00, m01, ox = -m00, -m01, (tile_x + 1) * level_w - ox
        else:
            ox -= tile_x * level_w
        if tile_y % 2:
            m10, m11, oy = -m10, -m11, (tile_y + 1) * level_h - oy
        else:
            oy -= tile_y * level_h
    else:
        # Straddling a mirror line: gather the mirrored neighbourhood (separable, so cheap).
        rows = mirror(np.arange(y0, y1), level_h)
        cols = mirror(np.arange(x0, x1), level_w)
        source = Image.fromarray(plane.arrays[level][np.ix_(rows, cols)])
        ox, oy = ox - x0, oy - y0
    return source.transform((width, height), Image.AFFINE, (m00, m01, ox, m10, m11, oy), Image.BILINEAR)


def _texture_score(plane: Plane, pose: Pose, aspect: float) -> float:
    width = max(8, round(_TEXTURE_PROBE * max(aspect, 1.0)))
    height = max(8, round(_TEXTURE_PROBE / min(aspect, 1.0)))
    gray = np.asarray(_render_view(plane, pose, width, height), dtype=np.float32).mean(axis=2)
    return float(np.abs(np.diff(gray, axis=0)).mean() + np.abs(np.diff(gray, axis=1)).mean())


@dataclass(frozen=True)
class _Distractor:
    """A small coloured shape moving on its own, bouncing inside the frame (view units)."""

    vertices: np.ndarray  # (K, 2) unit polygon
    radius: float
    colour: tuple[int, int, int]
    outline: tuple[int, int, int]
    start: tuple[float, float]
    velocity: tuple[float, float]
    spin: float
    wobble: tuple[Oscillator, Oscillator]

    @staticmethod
    def random(rng: np.random.Generator, config: MotionConfig, extent: tuple[float, float]) -> _Distractor:
        kind = int(rng.integers(4))
        count = (16, 4, 3, int(rng.integers(5, 9)))[kind]
        angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
        radii = rng.uniform(0.55, 1.0, count) if kind == 3 else np.ones(count)
        aspect = rng.uniform(0.5, 1.0)
        vertices = np.stack([radii * np.cos(angles), aspect * radii * np.sin(angles)], axis=1)
        colour = random_colour(rng)
        speed = rng.uniform(*config.distractor_speed)
        heading = rng.uniform(0, 2 * np.pi)
        return _Distractor(
            vertices=vertices,
            radius=rng.uniform(*config.distractor_size) / 2,
            colour=colour,
            outline=tuple(int(c * 0.4) for c in colour),
            start=(rng.uniform(0, extent[0]), rng.uniform(0, extent[1])),
            velocity=(speed * math.cos(heading), speed * math.sin(heading)),
            spin=rng.uniform(-2.0, 2.0),
            wobble=(Oscillator.random(rng, 0.05, (0.3, 2.0)), Oscillator.random(rng, 0.05, (0.3, 2.0))),
        )

    def polygon(self, t: float, extent: tuple[float, float], short: int) -> list[tuple[float, float]]:
        centre = []
        for axis in range(2):
            low, span = self.radius, max(extent[axis] - 2 * self.radius, 1e-6)
            travel = self.start[axis] - low + self.velocity[axis] * t + self.wobble[axis](t)
            bounced = span - abs(travel % (2 * span) - span)  # triangle wave: bounce off the edges
            centre.append(low + bounced)
        cos, sin = math.cos(self.spin * t), math.sin(self.spin * t)
        rotated = self.vertices @ np.array([[cos, sin], [-sin, cos]]) * self.radius
        points = (rotated + np.array(centre)) * short
        return [tuple(p) for p in points]


@dataclass(frozen=True)
class _Look:
    """Per-sequence photometric and sensor parameters."""

    gain: np.ndarray  # (3,) multiplicative, contrast included
    offset: np.ndarray  # (3,) additive
    noise_std: float
    exposure: float
    jpeg_quality: int | None

    @property
    def lookup_table(self) -> np.ndarray:
        """Brightness, contrast and white balance as one table: 256 uint8 entries per channel, flat."""
        levels = np.arange(256, dtype=np.float32)
        table = np.clip(np.round(levels[None, :] * self.gain[:, None] + self.offset[:, None]), 0, 255)
        return table.astype(np.uint8).ravel()

    @staticmethod
    def random(rng: np.random.Generator, config: MotionConfig) -> _Look:
        contrast = rng.uniform(*config.contrast)
        brightness = rng.uniform(*config.brightness)
        gains = 1.0 + rng.uniform(-config.channel_gain, config.channel_gain, 3)
        noise_std = rng.uniform(*config.noise_std)
        exposure = rng.uniform(*config.exposure)
        use_jpeg = rng.random() < config.jpeg_prob
        quality = int(rng.integers(config.jpeg_quality[0], config.jpeg_quality[1] + 1))
        return _Look(
            gain=(contrast * gains).astype(np.float32),
            offset=np.full(3, (1.0 - contrast) * 128.0 + brightness, dtype=np.float32),
            noise_std=float(noise_std),
            exposure=float(exposure),
            jpeg_quality=quality if use_jpeg else None,
        )


def _choose_source(rng: np.random.Generator, config: MotionConfig) -> str:
    procedural = rng.random() < config.procedural_fraction
    index = int(rng.integers(len(config.photos)))
    if config.source is not None:
        return config.source
    return PROCEDURAL if procedural else config.photos[index]


def _scene_streams(seed: int, config: MotionConfig) -> list[np.random.SeedSequence]:
    """Independent random streams (scene, motion, distractors, per-frame noise) for one video."""
    entropy = [int(seed) & 0xFFFF_FFFF_FFFF_FFFF, _SPLIT_ENTROPY[config.split]]
    return np.random.SeedSequence(entropy).spawn(4)


def clip_source(seed: int, config: MotionConfig = MotionConfig()) -> str:
    """The photograph (or ``"procedural"``) a clip or sequence with this seed is filmed on."""
    return _choose_source(np.random.default_rng(_scene_streams(seed, config)[0]), config)


class SequenceRenderer:
    """Renders one continuous video; the camera pose carries over from segment to segment."""

    def __init__(self, seed: int, config: MotionConfig) -> None:
        scene_seq, motion_seq, distractor_seq, frame_seq = _scene_streams(seed, config)
        self.config = config
        self.motion_rng = np.random.default_rng(motion_seq)
        self.frame_rng = np.random.default_rng(frame_seq)
        scene_rng = np.random.default_rng(scene_seq)
        source = _choose_source(scene_rng, config)
        self.plane = (
            Plane(PROCEDURAL, procedural_texture(scene_rng))
            if source == PROCEDURAL
            else photo_plane(source)
        )
        self.look = _Look.random(scene_rng, config)
        self.lookup_table = self.look.lookup_table
        self.start_angle = math.radians(scene_rng.uniform(-config.start_angle_deg, config.start_angle_deg))
        short = min(config.width, config.height)
        self.extent = (config.width / short, config.height / short)
        self.scene_rng = scene_rng
        distractor_rng = np.random.default_rng(distractor_seq)
        count = int(distractor_rng.integers(0, config.max_distractors + 1))
        self.distractors = [_Distractor.random(distractor_rng, config, self.extent) for _ in range(count)]
        self.segment: Segment | None = None
        self.previous: Segment | None = None
        self.frame_index = 0
        self.requested_seconds = 0.0

    # -- planning

    def _start_pose(
        self, motion: SegmentMotion, duration: float, future: FloatRange
    ) -> tuple[Pose, SegmentMotion]:
        """Pick a start pose that keeps the first segment's view inside one mirror tile, on texture."""
        rng, plane, config = self.scene_rng, self.plane, self.config
        lowest, highest = plane.log_scale_bounds()
        preferred = (
            math.log(config.view_fraction[0] * plane.short_side),
            math.log(config.view_fraction[1] * plane.short_side),
        )
        effective = motion.warped_time(duration)

        def excursion(rate: float) -> FloatRange:
            end = -rate * effective
            return min(0.0, end, end + future[0]), max(0.0, end, end + future[1])

        low, high = excursion(motion.zoom_rate)
        if highest - high < lowest - low and motion.zoom_rate:  # too fast to fit: slow the first zoom down
            span = (highest - lowest) - (future[1] - future[0])
            rate = max(span / effective, config.zoom_rate[0])
            motion = replace(
                motion, zoom_rate=math.copysign(min(abs(motion.zoom_rate), rate), motion.zoom_rate)
            )
            low, high = excursion(motion.zoom_rate)
        feasible = (lowest - low, highest - high)
        if feasible[0] > feasible[1]:
            feasible = ((feasible[0] + feasible[1]) / 2,) * 2
        window = (max(feasible[0], preferred[0]), min(feasible[1], preferred[1]))
        if window[0] > window[1]:
            window = feasible
        log_scale = rng.uniform(*window)

        # Where the view's corners go during the segment, relative to its start centre. Everything
        # in the segment scales with the start view, so a path too long for the picture is made to
        # fit by zooming in (as far as the zoom plan allows) rather than crossing a mirror line.
        probe = Segment(0, 0, 1, 0.0, Pose(0.0, 0.0, 0.0, self.start_angle), motion)
        half_w, half_h = self.extent[0] / 2, self.extent[1] / 2
        corners = np.array([[-half_w, -half_h], [half_w, -half_h], [-half_w, half_h], [half_w, half_h]])
        reach = []
        for t in np.linspace(0.0, duration, 9):
            pose = probe.pose(float(t))
            side = math.exp(pose.log_scale)
            cos, sin = math.cos(pose.angle), math.sin(pose.angle)
            rotated = corners @ np.array([[cos, sin], [-sin, cos]]) * side
            reach.append(rotated + np.array([pose.x, pose.y]))
        reach = np.concatenate(reach)
        box_min, box_max = reach.min(axis=0), reach.max(axis=0)  # for a view short side of 1 pixel
        fit = min(plane.width / (box_max[0] - box_min[0]), plane.height / (box_max[1] - box_min[1]))
        log_scale = max(min(log_scale, math.log(fit)), feasible[0])
        box_min, box_max = box_min * math.exp(log_scale), box_max * math.exp(log_scale)

        best, best_score = None, -1.0
        aspect = config.width / config.height
        for _ in range(_TEXTURE_TRIES):
            centre = []
            # The odd mirror tile along x is the picture flipped left-right: a free augmentation.
            # Along y it would be upside down, which a handheld camera never sees at the start.
            for axis, size in enumerate((plane.width, plane.height)):
                tile = size * int(rng.integers(2)) if axis == 0 else 0
                lo, hi = tile - box_min[axis], tile + size - box_max[axis]
                centre.append(rng.uniform(lo, hi) if lo <= hi else tile + rng.uniform(0, size))
            pose = Pose(centre[0], centre[1], log_scale, self.start_angle)
            score = _texture_score(plane, pose, aspect)
            if score > best_score:
                best, best_score = pose, score
            if score >= _TEXTURE_THRESHOLD:
                break
        return best, motion

    def begin(self, label: int, seconds: float, future: Sequence[tuple[int, float]] = ()) -> Segment:
        """Start the next segment at the current frame; ``future`` lets zoom rates plan ahead."""
        if not 0 <= label < NUM_CLASSES:
            raise ValueError(f"label must be in [0, {NUM_CLASSES}), got {label}")
        if seconds <= 0:
            raise ValueError(f"segment duration must be positive, got {seconds}")
        config = self.config
        start_frame = self.frame_index
        start_time = start_frame / config.fps
        # Boundaries follow the requested clock, so rounding never accumulates over a long video.
        self.requested_seconds += seconds
        end_frame = max(int(round(self.requested_seconds * config.fps)), start_frame + 1)
        duration = (end_frame - start_frame) / config.fps
        motion = draw_motion(label, self.motion_rng, config)
        future_zoom = zoom_excursion(min_zoom_plan(future, config))
        if self.segment is None:
            pose, motion = self._start_pose(motion, duration, future_zoom)
        else:
            pose = self.segment.end_pose(config.fps)
            motion = limit_zoom(
                motion, pose.log_scale, duration, future_zoom, self.plane.log_scale_bounds(), config
            )
        self.previous, self.segment = (
            self.segment,
            Segment(label, start_frame, end_frame, start_time, pose, motion),
        )
        return self.segment

    # -- frames

    def _pose_at(self, t: float) -> Pose:
        if t < self.segment.start_time and self.previous is not None:
            return self.previous.pose(t)
        return self.segment.pose(t)

    def _exposure_times(self, t: float) -> np.ndarray:
        dt = self.look.exposure / self.config.fps
        if dt <= 0:
            return np.array([t])
        # Blur in proportion to speed: more sub-frames only where the view moves by several pixels.
        a, b = self._pose_at(t - dt / 2), self._pose_at(t + dt / 2)
        shift = self._pixel_motion(a, b)
        count = int(np.clip(math.ceil(shift / 2.0), 1, 3))
        if count == 1:
            return np.array([t])
        return t + dt * (np.linspace(0.0, 1.0, count) - 0.5)

    def _pixel_motion(self, a: Pose, b: Pose) -> float:
        """Largest displacement of a frame corner between two poses, in output pixels."""
        short = min(self.config.width, self.config.height)
        half_w, half_h = self.extent[0] / 2, self.extent[1] / 2
        moved = 0.0
        for u, v in ((half_w, half_h), (half_w, -half_h), (-half_w, half_h), (-half_w, -half_h)):
            points = []
            for pose in (a, b):
                cos, sin = math.cos(pose.angle), math.sin(pose.angle)
                side = math.exp(pose.log_scale)
                points.append((pose.x + side * (cos * u - sin * v), pose.y + side * (sin * u + cos * v)))
            distance = math.hypot(points[1][0] - points[0][0], points[1][1] - points[0][1])
            moved = max(moved, distance / math.exp(a.log_scale) * short)  # in the first view's pixels
        return moved

    def next_frame(self) -> tuple[np.ndarray, int]:
        config, look = self.config, self.look
        if self.segment is None or self.frame_index >= self.segment.end_frame:
            raise RuntimeError("no segment covers the next frame; call begin() first")
        t = self.frame_index / config.fps
        image = None
        for count, ti in enumerate(self._exposure_times(t), start=1):
            view = _render_view(self.plane, self._pose_at(float(ti)), config.width, config.height)
            image = view if image is None else Image.blend(image, view, 1.0 / count)  # running mean
        if self.distractors:
            draw = ImageDraw.Draw(image)
            short = min(config.width, config.height)
            for distractor in self.distractors:
                draw.polygon(
                    distractor.polygon(t, self.extent, short),
                    fill=distractor.colour,
                    outline=distractor.outline,
                )
        frame = self.lookup_table.take(np.asarray(image) + _CHANNEL_OFFSETS)
        if look.noise_std > 0:
            # Luminance noise only: a third of the random draws, and webcam noise is mostly luma.
            noise = self.frame_rng.standard_normal((config.height, config.width, 1), dtype=np.float32)
            pixels = frame.astype(np.int16) + (noise * look.noise_std).round().astype(np.int16)
            frame = np.clip(pixels, 0, 255).astype(np.uint8)
        if look.jpeg_quality is not None:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=look.jpeg_quality)
            buffer.seek(0)
            with Image.open(buffer) as decoded:
                frame = np.asarray(decoded.convert("RGB"))
        self.frame_index += 1
        return frame, self.segment.label
