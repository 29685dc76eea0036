"""What the camera films: bundled photographs and procedural textures, mirrored to an infinite plane.

The scene is a photograph (or a procedural texture) tiled by mirroring, so the plane is infinite
and continuous: a long pan never leaves "the image" and never jumps. :class:`Plane` holds one such
picture with its mip pyramid and the range of view sizes a camera may take on it.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .config import PHOTO_FILES, FloatRange

_PROCEDURAL_SIZE = 320
# Poses are planned at this resolution so a seed gives the same scene at every output size.
_REFERENCE_SHORT_SIDE = 112
_MIN_SOURCE_PIXELS_PER_OUTPUT = 0.5  # at the reference size: never magnify a source more than 2x
_MIN_VIEW_FRACTION = 0.12
_MAX_VIEW_FRACTION = 1.0  # beyond this the view would show the mirrored copies


class Plane:
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


def mirror(indices: np.ndarray, n: int) -> np.ndarray:
    period = indices % (2 * n)
    return np.where(period >= n, 2 * n - 1 - period, period)


@lru_cache(maxsize=len(PHOTO_FILES))
def photo_plane(name: str) -> Plane:
    import skimage.data  # deferred: only the data directory is needed, and the import is slow

    path = Path(skimage.data.data_dir) / PHOTO_FILES[name]
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    # Some of these (cells, the moon) are very flat; stretching them keeps their motion visible.
    levels = _stretch(np.arange(256, dtype=np.float32), *np.percentile(rgb[::4, ::4], [0.5, 99.5]))
    return Plane(name, np.round(levels * 255.0).astype(np.uint8)[rgb])


def photo(name: str) -> np.ndarray:
    """One of the bundled photographs as uint8 ``[H, W, 3]`` (grayscale ones replicated)."""
    if name not in PHOTO_FILES:
        raise ValueError(f"unknown photo {name!r}; choose from {sorted(PHOTO_FILES)}")
    return photo_plane(name).arrays[0]


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


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
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
            draw.ellipse(box, fill=random_colour(rng))
        elif kind == 1:
            draw.rectangle(
                [x - radius, y - radius * rng.uniform(0.3, 1.0), x + radius, y + radius],
                fill=random_colour(rng),
            )
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, rng.integers(3, 7)))
            radii = radius * rng.uniform(0.5, 1.0, angles.size)
            points = list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles), strict=True))
            draw.polygon(points, fill=random_colour(rng))


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
            rgb = rgb * (1 - 0.5 * grating[..., None]) + 0.5 * grating[..., None] * random_colour(rng)
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
