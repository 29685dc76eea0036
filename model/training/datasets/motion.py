"""Synthetic camera-motion videos: a virtual camera moving over real photographs and textures.

This module owns the motion classes, their conventions, the renderer (clips, continuous multi-segment
sequences, endless streams) and a small PyAV video writer. Everything is deterministic given a seed
(numpy ``Generator`` only) and uses PIL/numpy; the photographs are the ones bundled with
scikit-image, so nothing is downloaded.

Conventions
-----------
Every class name says what the **camera** does, the way a person holding a phone would describe
their own gesture. What the model sees is the *content* moving the other way. Image axes: x points
right, y points down, as in the frame the model receives (NOT a mirrored "selfie" preview).

=========================  ======================================================================
class                      what the content does in the (un-mirrored) frame
=========================  ======================================================================
static                     nothing moves globally (sensor noise and small independent objects may)
pan left                   camera turns left  -> the whole scene slides to the RIGHT
pan right                  camera turns right -> the whole scene slides to the LEFT
tilt up                    camera tilts up    -> the whole scene slides DOWN
tilt down                  camera tilts down  -> the whole scene slides UP
zoom in                    camera zooms in / moves closer -> the scene GROWS about the centre
zoom out                   camera zooms out / moves away  -> the scene SHRINKS about the centre
rotate clockwise           camera rolls clockwise (seen from behind it, as its holder sees it)
                           -> the scene turns COUNTER-CLOCKWISE on screen
rotate counter-clockwise   camera rolls counter-clockwise -> the scene turns CLOCKWISE on screen
shake                      zero-mean jitter of position/roll/scale (a few Hz), no net motion
=========================  ======================================================================

The same labels in front of a fixed webcam. Turning the webcam (or a phone) by hand follows the
names literally. Moving the *content* instead (a book, a picture, a flat hand filling the view)
means producing the content motion of the table; for a person FACING the webcam that is:

=========================  ======================================================================
class                      gesture of a person facing the webcam, moving an object
=========================  ======================================================================
pan left / pan right       move it towards their OWN left / right (image right / left)
tilt up / tilt down        move it DOWN / UP
zoom in / zoom out         bring it closer / take it away
rotate clockwise / c-cw    turn it clockwise / counter-clockwise AS THEY SEE IT (facing the camera
                           flips the sense: the camera sees counter-clockwise / clockwise)
shake / static             wobble it back and forth a few times a second / hold it still
=========================  ======================================================================

Most browser and video-call previews are mirrored: there horizontal motion and the sense of
rotation look flipped relative to the frame the model gets; vertical motion and zoom do not.
Flipping a training clip left-right must therefore swap ``pan left``/``pan right`` and the two
rotations; flipping it upside down swaps the tilts and the rotations; playing it backwards swaps
every pair.

Units and the camera model
--------------------------
The scene is a photograph (or a procedural texture) tiled by mirroring, so the plane is infinite
and continuous: a long pan never leaves "the image" and never jumps. A camera pose is the view
centre on that plane (source pixels), the view's short side in source pixels (``log_scale``) and a
roll angle. Speeds are real units, independent of frame size and frame rate: translation in
*view short sides per second*, zoom as ``d ln(scale) / dt`` per second, rotation in degrees per
second. A clip rendered at 25 fps and 320x240 therefore shows the same motion per second as one at
8 fps and 112x112; resampling by time gives the training distribution (for non-square frames the
unit is the short side).

What a clip contains: a photograph from the split's set (:data:`TRAIN_PHOTOS` or the disjoint
:data:`HELDOUT_PHOTOS`; flipped left-right half of the time by starting in the mirrored tile) or a
procedural texture; a random start pose (view 25-80 % of the picture, roll within +-15 degrees)
chosen on texture and so that the whole clip stays inside the picture when possible; the class
motion with a small off-axis drift, speed wobble and optional hand tremor; 0-3 small shapes moving
on their own; motion blur from 1-3 sub-frames; brightness, contrast, white balance, luma noise and
sometimes JPEG. :meth:`MotionConfig.without_nuisances` turns all of that off except the motion.

Sequences: :func:`render_sequence` / :func:`iter_sequence` carry the camera pose from one segment to
the next, so only the motion changes at a boundary. Frame ``i`` shows the pose at ``t = i / fps``;
segment ``j`` spans frames ``[round(start_j * fps), round(end_j * fps))`` (``start_j``, ``end_j`` in
requested seconds since the start) and drives the motion over that time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter
from torch.utils.data import Dataset

CLASSES: tuple[str, ...] = (
    "static",
    "pan left",
    "pan right",
    "tilt up",
    "tilt down",
    "zoom in",
    "zoom out",
    "rotate clockwise",
    "rotate counter-clockwise",
    "shake",
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX: dict[str, int] = {name: index for index, name in enumerate(CLASSES)}


@dataclass(frozen=True)
class MotionSpec:
    """What the content does in the image for one class; magnitudes come from :class:`MotionConfig`.

    ``translate`` is the direction the content slides (x right, y down), ``zoom`` +1 means the
    content grows, ``spin`` +1 means the content turns clockwise on screen.
    """

    translate: tuple[float, float] = (0.0, 0.0)
    zoom: float = 0.0
    spin: float = 0.0
    shake: bool = False


MOTIONS: dict[str, MotionSpec] = {
    "static": MotionSpec(),
    "pan left": MotionSpec(translate=(1.0, 0.0)),
    "pan right": MotionSpec(translate=(-1.0, 0.0)),
    "tilt up": MotionSpec(translate=(0.0, 1.0)),
    "tilt down": MotionSpec(translate=(0.0, -1.0)),
    "zoom in": MotionSpec(zoom=1.0),
    "zoom out": MotionSpec(zoom=-1.0),
    # The camera's roll and the content's on-screen rotation have opposite senses.
    "rotate clockwise": MotionSpec(spin=-1.0),
    "rotate counter-clockwise": MotionSpec(spin=1.0),
    "shake": MotionSpec(shake=True),
}

# Photographs bundled with scikit-image (name -> file in ``skimage.data.data_dir``). ``cat`` is the
# same picture as ``chelsea`` and is left out so the splits stay disjoint in content, not just name.
PHOTO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
    "rocket": "rocket.jpg",
    "camera": "camera.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "coins": "coins.png",
    "page": "page.png",
    "cell": "cell.png",
    "chelsea": "chelsea.png",
    "motorcycle_left": "motorcycle_left.png",
    "retina": "retina.jpg",
    "gravel": "gravel.png",
    "moon": "moon.png",
    "text": "text.png",
}
TRAIN_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "rocket",
    "camera",
    "brick",
    "grass",
    "coins",
    "page",
    "cell",
)
HELDOUT_PHOTOS: tuple[str, ...] = ("chelsea", "motorcycle_left", "retina", "gravel", "moon", "text")
PROCEDURAL = "procedural"
SPLITS: dict[str, tuple[str, ...]] = {"train": TRAIN_PHOTOS, "heldout": HELDOUT_PHOTOS}
# Mixed into every seed so the held-out split never replays a training clip's random stream.
_SPLIT_ENTROPY = {"train": 0x5EED_0001, "heldout": 0x5EED_0002}

_PROCEDURAL_SIZE = 320
# Poses are planned at this resolution so a seed gives the same scene at every output size.
_REFERENCE_SHORT_SIDE = 112
_MIN_SOURCE_PIXELS_PER_OUTPUT = 0.5  # at the reference size: never magnify a source more than 2x
_MIN_VIEW_FRACTION = 0.12
_MAX_VIEW_FRACTION = 1.0  # beyond this the view would show the mirrored copies
_TEXTURE_PROBE = 32
_TEXTURE_THRESHOLD = 5.0
_TEXTURE_TRIES = 6
_CHANNEL_OFFSETS = np.array([0, 256, 512], dtype=np.intp)  # rows of the flattened (3, 256) table

FloatRange = tuple[float, float]


@dataclass(frozen=True)
class MotionConfig:
    """Everything that shapes a clip. Ranges are ``(low, high)`` and sampled uniformly per clip.

    Speeds are in real units (see the module docstring). The defaults keep motion visible at 8 fps
    and 112 px: pans move 2-10 px per frame, zooms move the frame edge 2-6 px per frame, rotations
    turn 2.5-11 degrees per frame.
    """

    size: int | tuple[int, int] = 112  # square side, or (width, height)
    frames: int = 16
    fps: float = 8.0
    split: str = "train"
    source: str | None = None  # force one photograph (or "procedural"); None: random from the split
    procedural_fraction: float = 0.3
    view_fraction: FloatRange = (0.25, 0.8)  # preferred view short side / image short side at start
    start_angle_deg: float = 15.0

    pan_speed: FloatRange = (0.15, 0.7)  # view short sides per second
    zoom_rate: FloatRange = (0.25, 0.8)  # |d ln(scale)/dt| per second
    rotate_speed_deg: FloatRange = (20.0, 90.0)  # degrees per second
    shake_translation: FloatRange = (0.02, 0.06)  # amplitude, view short sides
    shake_rotation_deg: FloatRange = (0.5, 3.0)
    shake_zoom: FloatRange = (0.0, 0.03)  # amplitude of ln(scale)
    shake_freq_hz: FloatRange = (1.0, 3.5)
    drift: float = 1.0  # scales the small off-axis motion added to every moving class; 0 disables
    speed_modulation: float = 0.25  # relative speed wobble within a segment
    tremor_prob: float = 0.5  # hand tremor, on any class including static
    tremor_translation: float = 0.004  # amplitude, view short sides (about 0.5 px at 112 px)

    max_distractors: int = 3
    distractor_size: FloatRange = (0.08, 0.22)  # view short sides
    distractor_speed: FloatRange = (0.0, 0.6)  # view short sides per second
    exposure: FloatRange = (0.0, 0.8)  # shutter open fraction of the frame interval (motion blur)
    noise_std: FloatRange = (0.0, 6.0)  # Gaussian, 8-bit units
    brightness: FloatRange = (-30.0, 30.0)
    contrast: FloatRange = (0.7, 1.3)
    channel_gain: float = 0.12  # per-channel white-balance jitter, +-
    jpeg_prob: float = 0.3
    jpeg_quality: tuple[int, int] = (25, 75)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {self.split!r}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"size must be positive, got {self.size!r}")
        if self.frames < 1 or self.fps <= 0:
            raise ValueError(f"need frames >= 1 and fps > 0, got {self.frames}, {self.fps}")
        if self.source is not None and self.source != PROCEDURAL and self.source not in PHOTO_FILES:
            raise ValueError(f"unknown source {self.source!r}; choose from {sorted(PHOTO_FILES)}")
        if not 0 <= self.max_distractors <= 16:
            raise ValueError(f"max_distractors must be in [0, 16], got {self.max_distractors}")
        for name in (
            "view_fraction",
            "pan_speed",
            "zoom_rate",
            "rotate_speed_deg",
            "shake_translation",
            "shake_rotation_deg",
            "shake_zoom",
            "shake_freq_hz",
            "distractor_size",
            "distractor_speed",
            "exposure",
            "noise_std",
            "brightness",
            "contrast",
            "jpeg_quality",
        ):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
        if self.pan_speed[0] <= 0 or self.zoom_rate[0] <= 0 or self.rotate_speed_deg[0] <= 0:
            raise ValueError("motion speeds must be positive, or the class is indistinguishable")
        if not 0 <= self.speed_modulation < 1:
            raise ValueError(f"speed_modulation must be in [0, 1), got {self.speed_modulation}")

    @property
    def width(self) -> int:
        return self.size if isinstance(self.size, int) else int(self.size[0])

    @property
    def height(self) -> int:
        return self.size if isinstance(self.size, int) else int(self.size[1])

    @property
    def photos(self) -> tuple[str, ...]:
        return SPLITS[self.split]

    def without_nuisances(self) -> MotionConfig:
        """The same camera motion with no noise, blur, distractors, drift, tremor or colour jitter."""
        return replace(
            self,
            drift=0.0,
            speed_modulation=0.0,
            tremor_prob=0.0,
            max_distractors=0,
            exposure=(0.0, 0.0),
            noise_std=(0.0, 0.0),
            brightness=(0.0, 0.0),
            contrast=(1.0, 1.0),
            channel_gain=0.0,
            jpeg_prob=0.0,
        )


# ----------------------------------------------------------------------------- scene planes


class _Plane:
    """A source image mirrored to an infinite plane, with a box-filtered mip pyramid.

    The picture is centre-cropped to a multiple of ``2**levels`` so every level halves exactly: the
    mirror period then scales with the level, and switching level mid-zoom far from the origin
    lands on the same spot.
    """

    def __init__(self, name: str, rgb: np.ndarray) -> None:
        self.name = name
        levels = max(0, int(math.log2(min(rgb.shape[:2]) / 16)))  # coarsest level >= 16 px
        multiple = 2**levels
        height, width = (rgb.shape[0] // multiple) * multiple, (rgb.shape[1] // multiple) * multiple
        top, left = (rgb.shape[0] - height) // 2, (rgb.shape[1] - width) // 2
        self.height, self.width = height, width
        images = [Image.fromarray(np.ascontiguousarray(rgb[top : top + height, left : left + width]))]
        for _ in range(levels):
            images.append(images[-1].reduce(2))
        self.images = tuple(images)
        self.arrays = tuple(np.asarray(image) for image in images)

    @property
    def short_side(self) -> int:
        return min(self.height, self.width)

    def log_scale_bounds(self) -> FloatRange:
        """Allowed ``ln(view short side in source pixels)``: no heavy magnification, no mirrored copies."""
        low = max(
            _MIN_VIEW_FRACTION * self.short_side,
            _MIN_SOURCE_PIXELS_PER_OUTPUT * _REFERENCE_SHORT_SIDE,
        )
        high = _MAX_VIEW_FRACTION * self.short_side
        return math.log(low), math.log(max(high, low))


def _mirror(indices: np.ndarray, n: int) -> np.ndarray:
    period = indices % (2 * n)
    return np.where(period >= n, 2 * n - 1 - period, period)


@lru_cache(maxsize=len(PHOTO_FILES))
def _photo_plane(name: str) -> _Plane:
    import skimage.data  # deferred: only the data directory is needed, and the import is slow

    path = Path(skimage.data.data_dir) / PHOTO_FILES[name]
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    # Some of these (cells, the moon) are very flat; stretching them keeps their motion visible.
    levels = _stretch(np.arange(256, dtype=np.float32), *np.percentile(rgb[::4, ::4], [0.5, 99.5]))
    return _Plane(name, np.round(levels * 255.0).astype(np.uint8)[rgb])


def photo(name: str) -> np.ndarray:
    """One of the bundled photographs as uint8 ``[H, W, 3]`` (grayscale ones replicated)."""
    if name not in PHOTO_FILES:
        raise ValueError(f"unknown photo {name!r}; choose from {sorted(PHOTO_FILES)}")
    return _photo_plane(name).arrays[0]


def _smooth_noise(rng: np.random.Generator, size: int, grid: int) -> np.ndarray:
    coarse = Image.fromarray(rng.random((grid, grid), dtype=np.float32))
    return np.asarray(coarse.resize((size, size), Image.BICUBIC), dtype=np.float32)


def _fractal_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """Multi-octave value noise in [0, 1], stretched so it always has full contrast."""
    octaves = [4, 8, 16, 32, 64, 128]
    weights = rng.uniform(0.3, 1.0, len(octaves)) * np.array([1.0, 0.8, 0.7, 0.6, 0.5, 0.4])
    return _stretch(sum(w * _smooth_noise(rng, size, grid) for w, grid in zip(weights, octaves, strict=True)))


def _stretch(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map ``lo..hi`` (default: the 1st..99th percentiles of ``values``) to [0, 1], clipped."""
    if lo is None or hi is None:
        lo, hi = np.percentile(values, [1.0, 99.0])
    return np.clip((values - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)


def _palette(rng: np.random.Generator, value: np.ndarray, count: int = 3) -> np.ndarray:
    """Colour a [0, 1] field with ``count`` random colours ordered from dark to light."""
    colours = _contrasting_colours(rng, count)
    stops = np.linspace(0.0, 1.0, count)
    return np.stack([np.interp(value, stops, colours[:, c]) for c in range(3)], axis=-1)


def _contrasting_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` random colours whose brightness spans most of the range, dark first."""
    brightness = np.linspace(rng.uniform(10, 70), rng.uniform(185, 245), count)
    tint = rng.uniform(-60, 60, (count, 3))
    return np.clip(brightness[:, None] + tint, 0, 255).astype(np.float32)


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _draw_shapes(rng: np.random.Generator, image: Image.Image, count: int, max_radius: float) -> None:
    draw = ImageDraw.Draw(image)
    size = image.size[0]
    for _ in range(count):
        x, y = rng.uniform(0, size, 2)
        radius = rng.uniform(3, max_radius)
        kind = rng.integers(3)
        if kind == 0:
            box = [x - radius, y - radius * rng.uniform(0.4, 1.0), x + radius, y + radius]
            draw.ellipse(box, fill=_random_colour(rng))
        elif kind == 1:
            draw.rectangle(
                [x - radius, y - radius * rng.uniform(0.3, 1.0), x + radius, y + radius],
                fill=_random_colour(rng),
            )
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
            radii = radius * rng.uniform(0.5, 1.0, angles.size)
            points = list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles), strict=True))
            draw.polygon(points, fill=_random_colour(rng))


def procedural_texture(rng: np.random.Generator, size: int = _PROCEDURAL_SIZE) -> np.ndarray:
    """A random textured picture (uint8 ``[size, size, 3]``): noise, plaid, checker, blobs or gradient.

    Every kind has structure along both axes (pure stripes would hide motion along them) and a fine
    grain on top, so the camera motion is visible anywhere in it.
    """
    kind = int(rng.integers(5))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:  # fractal noise with a random palette
        rgb = _palette(rng, _fractal_noise(rng, size), count=int(rng.integers(2, 5)))
    elif kind == 1:  # plaid: two gratings at different angles over a noise field
        rgb = _palette(rng, _fractal_noise(rng, size))
        for _ in range(2):
            angle = rng.uniform(0, np.pi)
            period = rng.uniform(8, 40)
            phase = np.cos(angle) * xs + np.sin(angle) * ys
            grating = 0.5 + 0.5 * np.sin(2 * np.pi * phase / period)
            rgb = rgb * (1 - 0.5 * grating[..., None]) + 0.5 * grating[..., None] * _random_colour(rng)
    elif kind == 2:  # rotated checkerboard, shaded
        angle = rng.uniform(0, np.pi / 2)
        period = rng.uniform(10, 48)
        u = np.cos(angle) * xs + np.sin(angle) * ys
        v = -np.sin(angle) * xs + np.cos(angle) * ys
        cells = (np.floor(u / period) + np.floor(v / period)) % 2
        dark, light = _contrasting_colours(rng, 2)
        rgb = np.where(cells[..., None] > 0, light, dark).astype(np.float32)
        rgb *= 0.6 + 0.4 * _fractal_noise(rng, size)[..., None]
    elif kind == 3:  # many random shapes on a noise background
        background = _palette(rng, _fractal_noise(rng, size)).astype(np.uint8)
        image = Image.fromarray(background)
        _draw_shapes(rng, image, int(rng.integers(60, 220)), max_radius=size * 0.08)
        rgb = np.asarray(image, dtype=np.float32)
    else:  # a gradient with blobs on it
        angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(angle) * xs + np.sin(angle) * ys) / size
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        image = Image.fromarray(_palette(rng, ramp, count=2).astype(np.uint8))
        _draw_shapes(rng, image, int(rng.integers(30, 120)), max_radius=size * 0.12)
        rgb = np.asarray(image, dtype=np.float32)
    rgb = rgb + rng.normal(0.0, rng.uniform(3, 10), rgb.shape[:2] + (1,)).astype(np.float32)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2))))


# ----------------------------------------------------------------------------- camera path


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
class _Oscillator:
    """Sum of sinusoids that starts at 0: zero-mean velocity, bounded, continuous.

    ``terms`` holds ``(amplitude, angular frequency, phase)``; plain floats because it is evaluated
    for every sub-frame and numpy's per-call overhead would dominate.
    """

    terms: tuple[tuple[float, float, float], ...] = ()

    @staticmethod
    def random(
        rng: np.random.Generator, amplitude: float, freq_hz: FloatRange, parts: int = 3
    ) -> _Oscillator:
        weights = rng.dirichlet(np.ones(parts))
        omegas = 2 * np.pi * rng.uniform(*freq_hz, parts)
        phases = rng.uniform(0, 2 * np.pi, parts)
        return _Oscillator(
            tuple(
                (float(amplitude * w), float(o), float(p))
                for w, o, p in zip(weights, omegas, phases, strict=True)
            )
        )

    def __add__(self, other: _Oscillator) -> _Oscillator:
        return _Oscillator(self.terms + other.terms)

    def __call__(self, t: float) -> float:
        return sum(a * (math.sin(o * t + p) - math.sin(p)) for a, o, p in self.terms)


@dataclass(frozen=True)
class _Motion:
    """One segment's motion, drawn before the start pose is known. Content-centred units."""

    velocity: tuple[float, float]  # view short sides per second, content direction
    zoom_rate: float  # d ln(content scale) / dt
    spin: float  # rad/s, + = content turns clockwise on screen
    modulation: tuple[float, float, float]  # depth, angular frequency, phase of the speed wobble
    wobble: tuple[_Oscillator, _Oscillator, _Oscillator, _Oscillator]  # x, y, angle, log-scale

    def warped_time(self, t: float) -> float:
        depth, omega, phase = self.modulation
        if depth == 0.0:
            return t
        return t + depth * (math.sin(omega * t + phase) - math.sin(phase)) / omega


def _draw_motion(label: int, rng: np.random.Generator, config: MotionConfig) -> _Motion:
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

    wobble = [_Oscillator() for _ in range(4)]
    if spec.shake:
        wobble = [
            _Oscillator.random(rng, rng.uniform(*config.shake_translation), config.shake_freq_hz),
            _Oscillator.random(rng, rng.uniform(*config.shake_translation), config.shake_freq_hz),
            _Oscillator.random(
                rng, math.radians(rng.uniform(*config.shake_rotation_deg)), config.shake_freq_hz
            ),
            _Oscillator.random(rng, rng.uniform(*config.shake_zoom), config.shake_freq_hz),
        ]
    tremor = rng.random() < config.tremor_prob
    if tremor:
        amp = config.tremor_translation * rng.uniform(0.3, 1.0)
        tremor_osc = [
            _Oscillator.random(rng, amp, (2.0, 6.0)),
            _Oscillator.random(rng, amp, (2.0, 6.0)),
            _Oscillator.random(rng, amp * 0.5, (2.0, 6.0)),  # radians, ~0.1 degree
            _Oscillator.random(rng, amp * 0.5, (2.0, 6.0)),
        ]
        wobble = [w + r for w, r in zip(wobble, tremor_osc, strict=True)]
    return _Motion(
        velocity=(float(velocity[0]), float(velocity[1])),
        zoom_rate=float(zoom_rate),
        spin=float(spin_rate),
        modulation=(float(depth), float(modulation[1]), float(modulation[2])),
        wobble=tuple(wobble),
    )


@dataclass(frozen=True)
class _Segment:
    label: int
    start_frame: int
    end_frame: int
    start_time: float
    start_pose: Pose
    motion: _Motion

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


def _zoom_excursion(rates_and_durations: Iterable[tuple[float, float]]) -> FloatRange:
    """Lowest and highest log-scale reached, relative to the start, by consecutive zooms."""
    level, low, high = 0.0, 0.0, 0.0
    for rate, duration in rates_and_durations:
        level -= rate * duration
        low, high = min(low, level), max(high, level)
    return low, high


def _min_zoom_plan(labels_and_durations: Iterable[tuple[int, float]], config: MotionConfig):
    sign = {i: MOTIONS[name].zoom for i, name in enumerate(CLASSES)}
    return [(sign[label] * config.zoom_rate[0], duration) for label, duration in labels_and_durations]


def _limit_zoom(
    motion: _Motion,
    log_scale: float,
    duration: float,
    future: FloatRange,
    bounds: FloatRange,
    config: MotionConfig,
) -> _Motion:
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


# ----------------------------------------------------------------------------- rendering


def _view_affine(pose: Pose, width: int, height: int, plane: _Plane):
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


def _render_view(plane: _Plane, pose: Pose, width: int, height: int) -> Image.Image:
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
        rows = _mirror(np.arange(y0, y1), level_h)
        cols = _mirror(np.arange(x0, x1), level_w)
        source = Image.fromarray(plane.arrays[level][np.ix_(rows, cols)])
        ox, oy = ox - x0, oy - y0
    return source.transform((width, height), Image.AFFINE, (m00, m01, ox, m10, m11, oy), Image.BILINEAR)


def _texture_score(plane: _Plane, pose: Pose, aspect: float) -> float:
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
    wobble: tuple[_Oscillator, _Oscillator]

    @staticmethod
    def random(rng: np.random.Generator, config: MotionConfig, extent: tuple[float, float]) -> _Distractor:
        kind = int(rng.integers(4))
        count = (16, 4, 3, int(rng.integers(5, 9)))[kind]
        angles = np.linspace(0, 2 * np.pi, count, endpoint=False) + rng.uniform(0, 2 * np.pi)
        radii = rng.uniform(0.55, 1.0, count) if kind == 3 else np.ones(count)
        aspect = rng.uniform(0.5, 1.0)
        vertices = np.stack([radii * np.cos(angles), aspect * radii * np.sin(angles)], axis=1)
        colour = _random_colour(rng)
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
            wobble=(_Oscillator.random(rng, 0.05, (0.3, 2.0)), _Oscillator.random(rng, 0.05, (0.3, 2.0))),
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


class _SequenceRenderer:
    """Renders one continuous video; the camera pose carries over from segment to segment."""

    def __init__(self, seed: int, config: MotionConfig) -> None:
        scene_seq, motion_seq, distractor_seq, frame_seq = _scene_streams(seed, config)
        self.config = config
        self.motion_rng = np.random.default_rng(motion_seq)
        self.frame_rng = np.random.default_rng(frame_seq)
        scene_rng = np.random.default_rng(scene_seq)
        source = _choose_source(scene_rng, config)
        self.plane = (
            _Plane(PROCEDURAL, procedural_texture(scene_rng))
            if source == PROCEDURAL
            else _photo_plane(source)
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
        self.segment: _Segment | None = None
        self.previous: _Segment | None = None
        self.frame_index = 0
        self.requested_seconds = 0.0

    # -- planning

    def _start_pose(self, motion: _Motion, duration: float, future: FloatRange) -> tuple[Pose, _Motion]:
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
        probe = _Segment(0, 0, 1, 0.0, Pose(0.0, 0.0, 0.0, self.start_angle), motion)
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

    def begin(self, label: int, seconds: float, future: Sequence[tuple[int, float]] = ()) -> _Segment:
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
        motion = _draw_motion(label, self.motion_rng, config)
        future_zoom = _zoom_excursion(_min_zoom_plan(future, config))
        if self.segment is None:
            pose, motion = self._start_pose(motion, duration, future_zoom)
        else:
            pose = self.segment.end_pose(config.fps)
            motion = _limit_zoom(
                motion, pose.log_scale, duration, future_zoom, self.plane.log_scale_bounds(), config
            )
        self.previous, self.segment = (
            self.segment,
            _Segment(label, start_frame, end_frame, start_time, pose, motion),
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


# ----------------------------------------------------------------------------- public API


def _parse_label(label: int | str) -> int:
    if isinstance(label, str):
        if label not in CLASS_INDEX:
            raise ValueError(f"unknown class {label!r}; choose from {CLASSES}")
        return CLASS_INDEX[label]
    return int(label)


def render_clip(label: int | str, seed: int, config: MotionConfig = MotionConfig()) -> np.ndarray:
    """One clip of ``config.frames`` frames showing class ``label``: uint8 ``[T, H, W, 3]``."""
    renderer = _SequenceRenderer(seed, config)
    renderer.begin(_parse_label(label), config.frames / config.fps)
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
    renderer = _SequenceRenderer(seed, config)
    parsed = ((_parse_label(label), float(seconds)) for label, seconds in (planned or segments))
    for index, (label, seconds) in enumerate(parsed):
        future = [(_parse_label(lb), float(s)) for lb, s in planned[index + 1 :]] if planned else ()
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
    choices = [_parse_label(c) for c in (classes if classes is not None else range(NUM_CLASSES))]
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


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` in a dataset seeded with ``seed`` (independent streams per clip)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0])


class MotionDataset(Dataset):
    """``num_clips`` rendered-on-the-fly clips with exactly balanced labels (when divisible by 10).

    Item ``i`` is ``(clip, label)``; the clip is a uint8 tensor ``[T, H, W, 3]``, or with
    ``as_float=True`` a float tensor ``[3, T, H, W]`` in ``[0, 1]`` (what the model consumes).
    """

    def __init__(
        self,
        config: MotionConfig = MotionConfig(),
        num_clips: int = 1000,
        seed: int = 0,
        as_float: bool = False,
    ) -> None:
        if num_clips < 1:
            raise ValueError(f"num_clips must be positive, got {num_clips}")
        self.config = config
        self.num_clips = num_clips
        self.seed = seed
        self.as_float = as_float
        permutation = np.random.default_rng([int(seed), 0xBA1A_2CE]).permutation(num_clips)
        self.labels = permutation % NUM_CLASSES
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.num_clips

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_clips:
            raise IndexError(index)
        label = int(self.labels[index])
        clip = torch.from_numpy(render_clip(label, clip_seed(self.seed, index), self.config))
        if self.as_float:
            clip = clip.permute(3, 0, 1, 2).float().div_(255.0)  # (3, T, H, W)
        return clip, label


# ----------------------------------------------------------------------------- video files


@dataclass(frozen=True)
class VideoFormat:
    container: str
    codecs: dict[str, str]  # user-facing codec name -> encoder
    default_codec: str
    options: dict[str, dict[str, str]] = field(default_factory=dict)  # per encoder


VIDEO_FORMATS: dict[str, VideoFormat] = {
    ".mp4": VideoFormat("mp4", {"h264": "libx264"}, "h264", {"libx264": {"crf": "23", "preset": "medium"}}),
    ".mkv": VideoFormat(
        "matroska",
        {"h264": "libx264", "vp8": "libvpx"},
        "h264",
        {
            "libx264": {"crf": "23", "preset": "medium"},
            "libvpx": {"crf": "10", "deadline": "good", "cpu-used": "4"},
        },
    ),
    ".webm": VideoFormat(
        "webm", {"vp8": "libvpx"}, "vp8", {"libvpx": {"crf": "10", "deadline": "good", "cpu-used": "4"}}
    ),
    # Raw YUV 4:2:0 in a y4m file: what Chromium's --use-file-for-fake-video-capture reads.
    ".y4m": VideoFormat("yuv4mpegpipe", {"rawvideo": "rawvideo"}, "rawvideo"),
}


class VideoWriter:
    """Encode RGB uint8 frames with PyAV; the container follows the suffix (.mp4, .webm, .mkv, .y4m)."""

    def __init__(
        self,
        path: str | Path,
        fps: float,
        width: int,
        height: int,
        codec: str | None = None,
        quality: int | None = None,
        bit_rate: int = 1_500_000,
    ) -> None:
        import av  # deferred: training never writes videos

        suffix = Path(path).suffix.lower()
        if suffix not in VIDEO_FORMATS:
            raise ValueError(f"unsupported video suffix {suffix!r}; use one of {sorted(VIDEO_FORMATS)}")
        video_format = VIDEO_FORMATS[suffix]
        codec = codec or video_format.default_codec
        if codec not in video_format.codecs:
            raise ValueError(f"{suffix} files take codec {sorted(video_format.codecs)}, not {codec!r}")
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
        encoder = video_format.codecs[codec]
        self.width, self.height = width, height
        self.rate = Fraction(fps).limit_denominator(1001)
        self._container = av.open(str(path), mode="w", format=video_format.container)
        options = dict(video_format.options.get(encoder, {}))
        if quality is not None and "crf" in options:
            options["crf"] = str(quality)
        self._stream = self._container.add_stream(encoder, rate=self.rate, options=options)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        if encoder == "libvpx":
            self._stream.bit_rate = bit_rate  # libvpx treats crf as a cap under this rate
        self._frame_type = av.VideoFrame
        self.frames_written = 0

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}"
            )
        video_frame = self._frame_type.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self.rate
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str | None = None,
    quality: int | None = None,
) -> int:
    """Write RGB uint8 frames (an array or any iterable, consumed lazily); returns the frame count."""
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("no frames to write")
    height, width = first.shape[:2]
    with VideoWriter(path, fps, width, height, codec=codec, quality=quality) as writer:
        writer.write(first)
        for frame in iterator:
            writer.write(frame)
    return writer.frames_written
