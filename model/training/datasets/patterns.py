"""Synthetic actions the bundled motion model was never trained on, as labelled folders of videos.

Two families, both deterministic by seed, for fine-tuning (``python -m model.train --data DIR``) and
its tests; ``tools/make_pattern_folder.py`` writes a folder ``DIR/<class>/*.mp4|*.webm``.

**Camera motions** (:data:`CAMERA_MOTIONS`), rendered with the motion package's renderer under
other speeds and on other pictures (its held-out photographs and procedural textures), then
turned into directions it never learnt:

=====================  ===================================================================
class                  what the camera does (the content moves the other way)
=====================  ===================================================================
pan up-left            moves diagonally up and to the left (a ``pan left`` clip turned 45 degrees)
pan up-right           ... up and to the right
pan down-left          ... down and to the left
pan down-right         ... down and to the right
sway                   wanders slowly back and forth (0.4-1 Hz, a fifth of the view): a slow,
                       large ``shake``
=====================  ===================================================================

A left-right mirror swaps the diagonals: train these with ``--no-flip``.

**Object actions** (:data:`OBJECT_ACTIONS`): the camera holds still and a large textured object
(half the view or more, like a hand or a book in front of a webcam) acts over a textured
background: ``orbit`` (circles, either sense), ``swing sideways``, ``swing up and down``,
``pulse`` (grows and shrinks) and ``spin`` (turns in place, either sense; elongated so it shows).
These are periodic, so any window shows the class, and a mirror keeps every label. The bundled
model, trained to follow the camera and to ignore objects that move on their own, calls all of
them ``static``: the backbone has to relearn more, which is why they take more data
(docs/training.md).

**Known motions** (:data:`KNOWN_MOTIONS`): the motion data set's own ten classes, rendered at this
module's (mostly slower) speeds on its held-out pictures, for tests of the fine-tuning pipeline
where the backbone already has the features.

Speeds are in real units (frame short sides per second, turns per second), so a clip written at
25 fps and 160x120 shows the same action per second as one at 10 fps and 96x96.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .motion import CLASSES, HELDOUT_PHOTOS, MotionConfig, photo, procedural_texture, render_clip
from .video import write_video

# The direction the camera moves, as (x, y) in image axes (x right, y down).
_DIAGONALS: dict[str, tuple[int, int]] = {
    "pan up-left": (-1, -1),
    "pan up-right": (1, -1),
    "pan down-left": (-1, 1),
    "pan down-right": (1, 1),
}
CAMERA_MOTIONS: tuple[str, ...] = (*_DIAGONALS, "sway")
OBJECT_ACTIONS: tuple[str, ...] = ("orbit", "swing sideways", "swing up and down", "pulse", "spin")
# The motion data set's own classes, rendered at this module's speeds on held-out pictures.
KNOWN_MOTIONS: tuple[str, ...] = CLASSES
PATTERNS: tuple[str, ...] = CAMERA_MOTIONS + OBJECT_ACTIONS + KNOWN_MOTIONS

FloatRange = tuple[float, float]


@dataclass(frozen=True)
class PatternConfig:
    """What shapes a clip; ranges are ``(low, high)``, sampled uniformly per clip.

    ``pan_speed``, ``zoom_rate``, ``rotate_speed_deg`` and the ``sway_*`` fields shape camera
    motions (the motion data set trains on pans of 0.15-0.7 view short sides per second, zooms of
    0.25-0.8 per second, rotations of 20-90 degrees per second and shakes of 1-3.5 Hz); the
    others, object actions.
    """

    width: int = 128
    height: int = 96
    fps: float = 15.0
    seconds: float = 3.0
    object_size: FloatRange = (0.5, 0.8)  # longest extent, frame short sides
    amplitude: FloatRange = (0.15, 0.28)  # orbit radius / swing half-travel, frame short sides
    frequency_hz: FloatRange = (0.4, 0.9)  # orbits, swings and pulses per second
    pulse_depth: FloatRange = (0.3, 0.5)  # |ln(scale)| at the extremes of a pulse
    spin_turns: FloatRange = (0.25, 0.6)  # turns per second
    photo_fraction: float = 0.3  # backgrounds from the held-out photographs, else procedural
    noise_std: FloatRange = (0.0, 4.0)  # Gaussian, 8-bit units (object actions; camera motions have the renderer's)
    pan_speed: FloatRange = (0.1, 0.45)  # view short sides per second
    zoom_rate: FloatRange = (0.15, 0.5)  # |d ln(scale)/dt| per second
    rotate_speed_deg: FloatRange = (10.0, 60.0)  # degrees per second
    sway_amplitude: FloatRange = (0.12, 0.22)  # view short sides
    sway_freq_hz: FloatRange = (0.4, 1.0)
    brightness: FloatRange = (-20.0, 20.0)

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be even and >= 16, got {self.width}x{self.height}")
        if self.fps <= 0 or self.seconds <= 0:
            raise ValueError(f"need fps > 0 and seconds > 0, got {self.fps}, {self.seconds}")

    @property
    def frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))


def _object(rng: np.random.Generator, side: int, elongated: bool) -> Image.Image:
    """A textured RGBA patch ``side`` x ``side`` whose alpha is an ellipse, a box or a blob (a bar if ``elongated``).

    Textured, not flat: the object's own texture carries its motion, the way a hand or a book
    filling the view does in front of a webcam.
    """
    kind = int(rng.integers(3))
    count = (32, 4, int(rng.integers(6, 10)))[kind]
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + (np.pi / 4 if kind == 1 else 0.0)
    radii = rng.uniform(0.75, 1.0, count) if kind == 2 else np.ones(count)
    aspect = rng.uniform(0.35, 0.5) if elongated else rng.uniform(0.75, 1.0)
    half = side / 2
    points = np.stack([radii * np.cos(angles), aspect * radii * np.sin(angles)], axis=1) * half * 0.98 + half
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).polygon([tuple(p) for p in points], fill=255)
    texture = Image.fromarray(procedural_texture(rng, size=side)).convert("RGBA")
    texture.putalpha(mask)
    return texture


def _background(rng: np.random.Generator, config: PatternConfig) -> Image.Image:
    side = max(config.width, config.height)
    if rng.random() < config.photo_fraction:
        picture = photo(HELDOUT_PHOTOS[int(rng.integers(len(HELDOUT_PHOTOS)))])
        image = Image.fromarray(picture)
        scale = side / min(image.size) * rng.uniform(1.0, 1.6)
        image = image.resize((max(side, round(image.size[0] * scale)), max(side, round(image.size[1] * scale))))
    else:
        image = Image.fromarray(procedural_texture(rng, size=max(side, 160)))
    left = int(rng.integers(0, image.size[0] - config.width + 1))
    top = int(rng.integers(0, image.size[1] - config.height + 1))
    return image.crop((left, top, left + config.width, top + config.height)).convert("RGBA")


def render_pattern(name: str, seed: int, config: PatternConfig = PatternConfig()) -> np.ndarray:
    """One clip of class ``name`` (any of :data:`PATTERNS`): uint8 ``[T, H, W, 3]``, deterministic by ``seed``."""
    if name in CAMERA_MOTIONS or name in KNOWN_MOTIONS:
        return render_camera_motion(name, seed, config)
    if name in OBJECT_ACTIONS:
        return render_object_action(name, seed, config)
    raise ValueError(f"unknown pattern {name!r}; choose from {PATTERNS}")


def render_camera_motion(name: str, seed: int, config: PatternConfig = PatternConfig()) -> np.ndarray:
    """A camera motion of :data:`CAMERA_MOTIONS` or :data:`KNOWN_MOTIONS` through the motion renderer
    (held-out pictures, this config's speeds)."""
    motion = MotionConfig(
        frames=config.frames,
        fps=config.fps,
        split="heldout",
        procedural_fraction=1.0 - config.photo_fraction,
        pan_speed=config.pan_speed,
        zoom_rate=config.zoom_rate,
        rotate_speed_deg=config.rotate_speed_deg,
    )
    if name in KNOWN_MOTIONS:
        return render_clip(name, seed, replace(motion, size=(config.width, config.height)))
    if name == "sway":
        sway = replace(motion, size=(config.width, config.height), shake_translation=config.sway_amplitude,
                       shake_rotation_deg=(0.5, 2.0), shake_zoom=(0.0, 0.02), shake_freq_hz=config.sway_freq_hz)
        return render_clip("shake", seed, sway)
    # Render a pan left (the content slides right) on a square big enough for any turn of the
    # frame, then turn every frame the same way: the content then slides against the diagonal.
    side = int(math.ceil(math.hypot(config.width, config.height))) + 2
    side += side % 2
    frames = render_clip("pan left", seed, replace(motion, size=side))
    camera_x, camera_y = _DIAGONALS[name]
    content_angle = math.degrees(math.atan2(-camera_y, -camera_x))  # image axes, y down
    left, top = (side - config.width) // 2, (side - config.height) // 2
    box = (left, top, left + config.width, top + config.height)
    # PIL turns counter-clockwise on screen, i.e. by minus the angle in y-down image axes.
    return np.stack([np.asarray(Image.fromarray(frame).rotate(-content_angle, Image.BILINEAR).crop(box))
                     for frame in frames])


def render_object_action(name: str, seed: int, config: PatternConfig = PatternConfig()) -> np.ndarray:
    """An object action of :data:`OBJECT_ACTIONS`: a textured sprite moving over a still background."""
    if name not in OBJECT_ACTIONS:
        raise ValueError(f"unknown object action {name!r}; choose from {OBJECT_ACTIONS}")
    rng = np.random.default_rng([int(seed), PATTERNS.index(name), 0xAC7_10])
    short = min(config.width, config.height)
    background = _background(rng, config)
    object_side = 256
    sprite = _object(rng, object_side, elongated=name == "spin")
    extent = rng.uniform(*config.object_size) * short  # the sprite's side in frame pixels at scale 1
    amplitude = rng.uniform(*config.amplitude) * short
    omega = 2 * np.pi * rng.uniform(*config.frequency_hz)
    phase = rng.uniform(0, 2 * np.pi)
    sense = 1.0 if rng.random() < 0.5 else -1.0
    depth = rng.uniform(*config.pulse_depth)
    spin = sense * 2 * np.pi * rng.uniform(*config.spin_turns)
    # The centre may sit anywhere the path keeps at least half of the object in view.
    travel = amplitude if name in ("orbit", "swing sideways", "swing up and down") else 0.0
    centre = np.array([
        config.width / 2 + rng.uniform(-1, 1) * max(0.0, config.width / 2 - travel - extent / 4),
        config.height / 2 + rng.uniform(-1, 1) * max(0.0, config.height / 2 - travel - extent / 4),
    ])
    start_angle = rng.uniform(0, 2 * np.pi)
    noise_std = rng.uniform(*config.noise_std)
    brightness = rng.uniform(*config.brightness)

    frames = np.empty((config.frames, config.height, config.width, 3), dtype=np.uint8)
    for index in range(config.frames):
        t = index / config.fps
        wave = math.sin(omega * t + phase)
        offset, scale, angle = np.zeros(2), 1.0, start_angle
        if name == "orbit":
            offset = amplitude * np.array([math.cos(sense * omega * t + phase), math.sin(sense * omega * t + phase)])
        elif name == "swing sideways":
            offset = np.array([amplitude * wave, 0.0])
        elif name == "swing up and down":
            offset = np.array([0.0, amplitude * wave])
        elif name == "pulse":
            scale = math.exp(depth * wave)
        else:  # spin
            angle = start_angle + spin * t
        # PIL's affine maps output pixels to sprite pixels: rotate by -angle, divide by the scale.
        k = object_side / (extent * scale)
        cos, sin = math.cos(angle), math.sin(angle)
        x0, y0 = centre + offset
        a, b, d, e = k * cos, k * sin, -k * sin, k * cos
        c = object_side / 2 - a * x0 - b * y0
        f = object_side / 2 - d * x0 - e * y0
        layer = sprite.transform((config.width, config.height), Image.AFFINE, (a, b, c, d, e, f), Image.BILINEAR)
        image = Image.alpha_composite(background, layer).convert("RGB")
        pixels = np.asarray(image, dtype=np.float32) + brightness
        if noise_std > 0:
            pixels += rng.normal(0.0, noise_std, pixels.shape[:2] + (1,)).astype(np.float32)
        frames[index] = np.clip(pixels, 0, 255).astype(np.uint8)
    return frames


# (suffix, codec): the formats a folder data set mixes, H.264 in .mp4 and VP8 in .webm.
FOLDER_FORMATS: tuple[tuple[str, str], ...] = ((".mp4", "h264"), (".webm", "vp8"))
# (width, height, fps): the cameras a folder data set mixes, so training sees fitted and resampled input.
FOLDER_CAMERAS: tuple[tuple[int, int, float], ...] = ((128, 96, 15.0), (96, 96, 10.0), (160, 120, 25.0))


def write_pattern_folder(
    root: str | Path,
    classes: Sequence[str] = CAMERA_MOTIONS,
    clips_per_class: int = 20,
    seed: int = 0,
    seconds: float = 3.0,
    cameras: Sequence[tuple[int, int, float]] = FOLDER_CAMERAS,
    config: PatternConfig = PatternConfig(),
) -> list[Path]:
    """Write ``root/<class>/<class>_<i>.{mp4,webm}``, cycling formats and cameras; returns the paths.

    Clip ``i`` takes format ``i % 2`` and camera ``i % 3``, so six clips cover every pair.
    """
    root = Path(root)
    paths = []
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(clips_per_class):
            suffix, codec = FOLDER_FORMATS[index % len(FOLDER_FORMATS)]
            width, height, fps = cameras[index % len(cameras)]
            clip_config = replace(config, width=width, height=height, fps=fps, seconds=seconds)
            frames = render_pattern(name, seed * 1_000_003 + index, clip_config)
            path = folder / f"{name.replace(' ', '_')}_{index:03d}{suffix}"
            write_video(path, frames, fps, codec=codec, fast=True)
            paths.append(path)
    return paths
