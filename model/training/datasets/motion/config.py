"""What a motion clip is made of: the classes, the photo splits and :class:`MotionConfig`.

The class names, what the content does for each (:data:`MOTIONS`) and the conventions behind them
are documented in :mod:`model.training.datasets.motion`. The photographs are the ones bundled with
scikit-image, split into a training and a disjoint held-out set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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


def parse_label(label: int | str) -> int:
    if isinstance(label, str):
        if label not in CLASS_INDEX:
            raise ValueError(f"unknown class {label!r}; choose from {CLASSES}")
        return CLASS_INDEX[label]
    return int(label)
