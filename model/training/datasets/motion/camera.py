"""The camera's path: poses on the scene plane and the motion of each segment.

A camera pose is the view centre on the scene plane (source pixels), the view's short side in
source pixels (``log_scale``) and a roll angle. Speeds are real units, independent of frame size
and frame rate: translation in *view short sides per second*, zoom as ``d ln(scale) / dt`` per
second, rotation in degrees per second. A clip rendered at 25 fps and 320x240 therefore shows the
same motion per second as one at 8 fps and 112x112; resampling by time gives the training
distribution (for non-square frames the unit is the short side).

This module owns drawing a segment's motion for a class (:func:`draw_motion`: the class motion,
a small off-axis drift, speed wobble, shake and hand tremor), the pose at any time within a
segment (:class:`Segment`) and the zoom planning that keeps later zooms inside the picture.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from .config import CLASSES, MOTIONS, FloatRange, MotionConfig


@dataclass(frozen=True)
class Pose:
    """Camera pose on the scene plane.

    ``x, y``: view centre in level-0 source pixels. ``log_scale``: ln of the view's short side in
    source pixels (smaller = zoomed in). ``angle``: camera roll in radians, positive = the camera
    rolled clockwise (the content appears turned counter-clockwise).
    """

    x: float
    y: float
    log_scale: float
    angle: float


@dataclass(frozen=True)
class Oscillator:
    """Sum of sinusoids that starts at 0: zero-mean velocity, bounded, continuous.

    ``terms`` holds ``(amplitude, angular frequency, phase)``; plain floats because it is evaluated
    for every sub-frame and numpy's per-call overhead would dominate.
    """

    terms: tuple[tuple[float, float, float], ...] = ()

    @staticmethod
    def random(
        rng: np.random.Generator, amplitude: float, freq_hz: FloatRange, parts: int = 3
    ) -> Oscillator:
        weights = rng.dirichlet(np.ones(parts))
        omegas = 2 * np.pi * rng.uniform(*freq_hz, parts)
        phases = rng.uniform(0, 2 * np.pi, parts)
        return Oscillator(
            tuple(
                (float(amplitude * w), float(o), float(p))
                for w, o, p in zip(weights, omegas, phases, strict=True)
            )
        )

    def __add__(self, other: Oscillator) -> Oscillator:
        return Oscillator(self.terms + other.terms)

    def __call__(self, t: float) -> float:
        return sum(a * (math.sin(o * t + p) - math.sin(p)) for a, o, p in self.terms)


@dataclass(frozen=True)
class SegmentMotion:
    """One segment's motion, drawn before the start pose is known. Content-centred units."""

    velocity: tuple[float, float]  # view short sides per second, content direction
    zoom_rate: float  # d ln(content scale) / dt
    spin: float  # rad/s, + = content turns clockwise on screen
    modulation: tuple[float, float, float]  # depth, angular frequency, phase of the speed wobble
    wobble: tuple[Oscillator, Oscillator, Oscillator, Oscillator]  # x, y, angle, log-scale

    def warped_time(self, t: float) -> float:
        depth, omega, phase = self.modulation
        if depth == 0.0:
            return t
        return t + depth * (math.sin(omega * t + phase) - math.sin(phase)) / omega


def draw_motion(label: int, rng: np.random.Generator, config: MotionConfig) -> SegmentMotion:
    """Sample one segment's motion; the draw order is fixed so a seed means the same motion everywhere."""
    spec = MOTIONS[CLASSES[label]]
    pan = rng.uniform(*config.pan_speed)
    zoom = rng.uniform(*config.zoom_rate)
    spin = math.radians(rng.uniform(*config.rotate_speed_deg))
    drift = config.drift * rng.uniform(-1.0, 1.0, 4)  # cross-axis, x, y, angle/zoom
    moving = spec != MOTIONS["static"] and not spec.shake

    direction = np.asarray(spec.translate, dtype=np.float64)
    velocity = direction * pan
    if moving and direction.any():  # a pan drifts a little sideways, rolls and zooms a little
        velocity = velocity + np.array([-direction[1], direction[0]]) * 0.2 * pan * drift[0]
    elif moving:
        velocity = velocity + 0.04 * drift[1:3]
    zoom_rate = spec.zoom * zoom + (0.03 * drift[3] if moving and not spec.zoom else 0.0)
    spin_rate = spec.spin * spin + (math.radians(3.0) * drift[3] if moving and not spec.spin else 0.0)

    depth = config.speed_modulation * rng.uniform(0.0, 1.0) if moving else 0.0
    modulation = (depth, 2 * np.pi * rng.uniform(0.2, 1.0), rng.uniform(0, 2 * np.pi))

    wobble = [Oscillator() for _ in range(4)]
    if spec.shake:
        wobble = [
            Oscillator.random(rng, rng.uniform(*config.shake_translation), config.shake_freq_hz),
            Oscillator.random(rng, rng.uniform(*config.shake_translation), config.shake_freq_hz),
            Oscillator.random(
                rng, math.radians(rng.uniform(*config.shake_rotation_deg)), config.shake_freq_hz
            ),
            Oscillator.random(rng, rng.uniform(*config.shake_zoom), config.shake_freq_hz),
        ]
    tremor = rng.random() < config.tremor_prob
    if tremor:
        amp = config.tremor_translation * rng.uniform(0.3, 1.0)
        tremor_osc = [
            Oscillator.random(rng, amp, (2.0, 6.0)),
            Oscillator.random(rng, amp, (2.0, 6.0)),
            Oscillator.random(rng, amp * 0.5, (2.0, 6.0)),  # radians, ~0.1 degree
            Oscillator.random(rng, amp * 0.5, (2.0, 6.0)),
        ]
        wobble = [w + r for w, r in zip(wobble, tremor_osc, strict=True)]
    return SegmentMotion(
        velocity=(float(velocity[0]), float(velocity[1])),
        zoom_rate=float(zoom_rate),
        spin=float(spin_rate),
        modulation=(float(depth), float(modulation[1]), float(modulation[2])),
        wobble=tuple(wobble),
    )


@dataclass(frozen=True)
class Segment:
    label: int
    start_frame: int
    end_frame: int
    start_time: float
    start_pose: Pose
    motion: SegmentMotion

    def pose(self, t: float) -> Pose:
        """Pose at global time ``t``: constant-rate motion in the camera frame plus the wobble."""
        m, p0 = self.motion, self.start_pose
        local = t - self.start_time
        tau = m.warped_time(local)
        dx = m.velocity[0] * tau + m.wobble[0](local)
        dy = m.velocity[1] * tau + m.wobble[1](local)
        side = math.exp(p0.log_scale)
        cos, sin = math.cos(p0.angle), math.sin(p0.angle)
        # Content sliding by +d (view units, camera axes) = camera moving by -d on the plane.
        return Pose(
            x=p0.x - side * (cos * dx - sin * dy),
            y=p0.y - side * (sin * dx + cos * dy),
            log_scale=p0.log_scale - m.zoom_rate * tau + m.wobble[3](local),
            angle=p0.angle - m.spin * tau + m.wobble[2](local),
        )

    def end_pose(self, fps: float) -> Pose:
        return self.pose(self.end_frame / fps)


def zoom_excursion(rates_and_durations: Iterable[tuple[float, float]]) -> FloatRange:
    """Lowest and highest log-scale reached, relative to the start, by consecutive zooms."""
    level, low, high = 0.0, 0.0, 0.0
    for rate, duration in rates_and_durations:
        level -= rate * duration
        low, high = min(low, level), max(high, level)
    return low, high


def min_zoom_plan(labels_and_durations: Iterable[tuple[int, float]], config: MotionConfig):
    sign = {i: MOTIONS[name].zoom for i, name in enumerate(CLASSES)}
    return [(sign[label] * config.zoom_rate[0], duration) for label, duration in labels_and_durations]


def limit_zoom(
    motion: SegmentMotion,
    log_scale: float,
    duration: float,
    future: FloatRange,
    bounds: FloatRange,
    config: MotionConfig,
) -> SegmentMotion:
    """Slow a zoom down (never below the class minimum) so this and later zooms stay in bounds."""
    if motion.zoom_rate == 0.0:
        return motion
    lowest, highest = bounds
    if motion.zoom_rate > 0:  # zooming in: log_scale falls
        room = log_scale - lowest + future[0]
    else:
        room = highest - future[1] - log_scale
    limit = max(room / max(motion.warped_time(duration), 1e-6), config.zoom_rate[0])
    rate = math.copysign(min(abs(motion.zoom_rate), limit), motion.zoom_rate)
    return replace(motion, zoom_rate=rate)
