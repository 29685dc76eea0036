"""Architecture as data: the MoViNet block specs, transcribed from the official ``BLOCK_SPECS``.

The official TF Model Garden code (``official/projects/movinet/modeling/movinet.py``) is the source
of truth, not the paper's tables (the released checkpoints follow the code). Every spec here is a
frozen dataclass validated once; :mod:`model.movinet` builds a network from a :class:`BackboneSpec`
and a :class:`ModeSpec` (base or stream).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Triple = tuple[int, int, int]

K13: Triple = (1, 3, 3)
K15: Triple = (1, 5, 5)
K33: Triple = (3, 3, 3)
K53: Triple = (5, 3, 3)
S11: Triple = (1, 1, 1)
S12: Triple = (1, 2, 2)


@dataclass(frozen=True)
class StemSpec:
    filters: int
    kernel_size: Triple = K13
    strides: Triple = S12


@dataclass(frozen=True)
class StageSpec:
    """One stage: a list of MoViNet blocks that share their output width."""

    base_filters: int
    expand_filters: tuple[int, ...]
    kernel_sizes: tuple[Triple, ...]
    strides: tuple[Triple, ...]


@dataclass(frozen=True)
class HeadSpec:
    project_filters: int
    head_filters: int


@dataclass(frozen=True)
class BackboneSpec:
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec

    def __post_init__(self) -> None:
        validate_backbone(self)

    @property
    def num_blocks(self) -> int:
        return sum(len(stage.expand_filters) for stage in self.stages)


@dataclass(frozen=True)
class ModeSpec:
    """How a backbone runs: the official *base* or *stream* configuration.

    ``hard_sigmoid`` picks the SE gate of stream models: ``"keras2"`` is ``clip(0.2x + 0.5, 0, 1)``,
    the definition the released stream checkpoints were trained and exported with; ``"model_garden"``
    is ``relu6(x + 3) * 0.16667`` as in today's TF Model Garden source (used by the parity fixtures);
    ``"torch"`` is ``relu6(x + 3) / 6``.
    """

    causal: bool
    conv_type: str  # "3d" or "2plus1d"
    se_type: str  # "3d" or "2plus3d"
    activation: str  # "swish" or "hard_swish"
    gating_activation: str  # "sigmoid" or "hard_sigmoid"
    use_positional_encoding: bool = False
    hard_sigmoid: str = "keras2"
    classifier_activation: str = "swish"
    bn_epsilon: float = 1e-3
    se_ratio: float = 0.25
    dropout: float = 0.2

    def __post_init__(self) -> None:
        choices = {
            "conv_type": ("3d", "2plus1d"),
            "se_type": ("3d", "2plus3d"),
            "activation": ("swish", "hard_swish"),
            "gating_activation": ("sigmoid", "hard_sigmoid"),
            "hard_sigmoid": ("keras2", "model_garden", "torch"),
            "classifier_activation": ("swish", "hard_swish"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"ModeSpec.{name}={value!r}: expected one of {allowed}")
        if self.causal and self.se_type == "3d" and self.conv_type == "3d":
            pass  # causal 3D is the legacy stream layout; allowed for experiments
        if self.use_positional_encoding and not self.causal:
            raise ValueError("positional encoding is only used by causal (stream) models")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


BASE = ModeSpec(
    causal=False, conv_type="3d", se_type="3d", activation="swish", gating_activation="sigmoid"
)
STREAM = ModeSpec(
    causal=True,
    conv_type="2plus1d",
    se_type="2plus3d",
    activation="hard_swish",
    gating_activation="hard_sigmoid",
)


def _check_triple(name: str, value: Triple) -> None:
    if len(value) != 3 or any(not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"{name} must be three positive ints, got {value!r}")


def validate_backbone(spec: BackboneSpec) -> None:
    """Raise ``ValueError`` naming the first inconsistency in ``spec``."""
    if spec.stem.filters < 1:
        raise ValueError(f"stem filters must be positive, got {spec.stem.filters}")
    _check_triple("stem kernel_size", spec.stem.kernel_size)
    _check_triple("stem strides", spec.stem.strides)
    if not spec.stages:
        raise ValueError("a backbone needs at least one stage")
    for index, stage in enumerate(spec.stages):
        lengths = {len(stage.expand_filters), len(stage.kernel_sizes), len(stage.strides)}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                f"stage {index}: expand_filters, kernel_sizes and strides must have one equal, "
                f"non-zero length, got {len(stage.expand_filters)}, {len(stage.kernel_sizes)}, "
                f"{len(stage.strides)}"
            )
        for kernel, stride in zip(stage.kernel_sizes, stage.strides):
            _check_triple(f"stage {index} kernel", kernel)
            _check_triple(f"stage {index} stride", stride)
            if stride[0] != 1:
                raise ValueError(f"stage {index}: temporal strides are not supported, got {stride}")
        if stage.base_filters < 1 or any(e < 1 for e in stage.expand_filters):
            raise ValueError(f"stage {index}: filter counts must be positive")
    if spec.head.project_filters < 1 or spec.head.head_filters < 1:
        raise ValueError("head filters must be positive")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The TF/MobileNet channel rounding used for the SE hidden width."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


BLOCK_SPECS: dict[str, BackboneSpec] = {
    "a0": BackboneSpec(
        stem=StemSpec(filters=8, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=8,
                expand_filters=(24,),
                kernel_sizes=(K15,),
                strides=(S12,),
            ),
            StageSpec(
                base_filters=32,
                expand_filters=(80, 80, 80),
                kernel_sizes=(K33, K33, K33),
                strides=(S12, S11, S11),
            ),
            StageSpec(
                base_filters=56,
                expand_filters=(184, 112, 184),
                kernel_sizes=(K53, K33, K33),
                strides=(S12, S11, S11),
            ),
            StageSpec(
                base_filters=56,
                expand_filters=(184, 184, 184, 184),
                kernel_sizes=(K53, K33, K33, K33),
                strides=(S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=104,
                expand_filters=(384, 280, 280, 344),
                kernel_sizes=(K53, K15, K15, K15),
                strides=(S12, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=480, head_filters=2048),
    ),
    "a1": BackboneSpec(
        stem=StemSpec(filters=16, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=16,
                expand_filters=(40, 40),
                kernel_sizes=(K15, K33),
                strides=(S12, S11),
            ),
            StageSpec(
                base_filters=40,
                expand_filters=(96, 120, 96, 96),
                kernel_sizes=(K33, K33, K33, K33),
                strides=(S12, S11, S11, S11),
            ),
            StageSpec(
                base_filters=64,
                expand_filters=(216, 128, 216, 168, 216),
                kernel_sizes=(K53, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=64,
                expand_filters=(216, 216, 216, 128, 128, 216),
                kernel_sizes=(K53, K33, K33, K33, K15, K33),
                strides=(S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=136,
                expand_filters=(456, 360, 360, 360, 456, 456, 544),
                kernel_sizes=(K53, K15, K15, K15, K15, K33, K13),
                strides=(S12, S11, S11, S11, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=600, head_filters=2048),
    ),
    "a2": BackboneSpec(
        stem=StemSpec(filters=16, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=16,
                expand_filters=(40, 40, 64),
                kernel_sizes=(K15, K33, K33),
                strides=(S12, S11, S11),
            ),
            StageSpec(
                base_filters=40,
                expand_filters=(96, 120, 96, 96, 120),
                kernel_sizes=(K33, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=72,
                expand_filters=(240, 160, 240, 192, 240),
                kernel_sizes=(K53, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=72,
                expand_filters=(240, 240, 240, 240, 144, 240),
                kernel_sizes=(K53, K33, K33, K33, K15, K33),
                strides=(S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=144,
                expand_filters=(480, 384, 384, 480, 480, 480, 576),
                kernel_sizes=(K53, K15, K15, K15, K15, K33, K13),
                strides=(S12, S11, S11, S11, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=640, head_filters=2048),
    ),
    "a3": BackboneSpec(
        stem=StemSpec(filters=16, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=16,
                expand_filters=(40, 40, 64, 40),
                kernel_sizes=(K15, K33, K33, K33),
                strides=(S12, S11, S11, S11),
            ),
            StageSpec(
                base_filters=48,
                expand_filters=(112, 144, 112, 112, 144, 144),
                kernel_sizes=(K33, K33, K33, K15, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=80,
                expand_filters=(240, 152, 240, 192, 240),
                kernel_sizes=(K53, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=88,
                expand_filters=(264, 264, 264, 264, 160, 264, 264, 264),
                kernel_sizes=(K53, K33, K33, K33, K15, K33, K33, K33),
                strides=(S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=168,
                expand_filters=(560, 448, 448, 560, 560, 560, 448, 448, 560, 672),
                kernel_sizes=(K53, K15, K15, K15, K15, K33, K15, K15, K33, K13),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=744, head_filters=2048),
    ),
    "a4": BackboneSpec(
        stem=StemSpec(filters=24, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=24,
                expand_filters=(64, 64, 96, 64, 96, 64),
                kernel_sizes=(K15, K33, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=56,
                expand_filters=(168, 168, 136, 136, 168, 168, 168, 136, 136),
                kernel_sizes=(K33, K33, K33, K33, K33, K33, K33, K15, K33),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=96,
                expand_filters=(320, 160, 320, 192, 320, 160, 320, 256, 320),
                kernel_sizes=(K53, K33, K33, K33, K33, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=96,
                expand_filters=(320, 320, 320, 320, 192, 320, 320, 192, 320, 320),
                kernel_sizes=(K53, K33, K33, K33, K15, K33, K33, K33, K33, K33),
                strides=(S11, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=192,
                expand_filters=(640, 512, 512, 640, 640, 640, 512, 512, 640, 768, 640, 640, 768),
                kernel_sizes=(K53, K15, K15, K15, K15, K33, K15, K15, K15, K15, K15, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=856, head_filters=2048),
    ),
    "a5": BackboneSpec(
        stem=StemSpec(filters=24, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=24,
                expand_filters=(64, 64, 96, 64, 96, 64),
                kernel_sizes=(K15, K15, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=64,
                expand_filters=(192, 152, 152, 152, 192, 192, 192, 152, 152, 192, 192),
                kernel_sizes=(K53, K33, K33, K33, K33, K33, K33, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=112,
                expand_filters=(376, 224, 376, 376, 296, 376, 224, 376, 376, 296, 376, 376, 376),
                kernel_sizes=(K53, K33, K33, K33, K33, K33, K33, K33, K33, K33, K33, K33, K33),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=120,
                expand_filters=(376, 376, 376, 376, 224, 376, 376, 224, 376, 376, 376),
                kernel_sizes=(K53, K33, K33, K33, K15, K33, K33, K33, K33, K33, K33),
                strides=(S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=224,
                expand_filters=(744, 744, 600, 600, 744, 744, 744, 896, 600, 600, 896, 744, 744, 896, 600, 600, 744, 744),
                kernel_sizes=(K53, K33, K15, K15, K15, K15, K33, K15, K15, K15, K15, K15, K33, K15, K15, K15, K15, K33),
                strides=(S12, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=992, head_filters=2048),
    ),
    "t0": BackboneSpec(
        stem=StemSpec(filters=8, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(
                base_filters=8,
                expand_filters=(16,),
                kernel_sizes=(K15,),
                strides=(S12,),
            ),
            StageSpec(
                base_filters=32,
                expand_filters=(72, 72),
                kernel_sizes=(K33, K15),
                strides=(S12, S11),
            ),
            StageSpec(
                base_filters=56,
                expand_filters=(112, 112, 112),
                kernel_sizes=(K53, K15, K33),
                strides=(S12, S11, S11),
            ),
            StageSpec(
                base_filters=56,
                expand_filters=(184, 184, 184, 184),
                kernel_sizes=(K53, K15, K33, K33),
                strides=(S11, S11, S11, S11),
            ),
            StageSpec(
                base_filters=104,
                expand_filters=(344, 344, 344, 344),
                kernel_sizes=(K53, K15, K15, K33),
                strides=(S12, S11, S11, S11),
            ),
        ),
        head=HeadSpec(project_filters=240, head_filters=1024),
    ),
    # A tiny variant for fast tests. It covers every layer kind of the real models: kt = 1, 3 and 5,
    # stride-2 skips with pooling, and a stride-1 skip that only changes the width.
    "test": BackboneSpec(
        stem=StemSpec(filters=8, kernel_size=K13, strides=S12),
        stages=(
            StageSpec(base_filters=8, expand_filters=(16,), kernel_sizes=(K15,), strides=(S12,)),
            StageSpec(
                base_filters=16, expand_filters=(40, 40), kernel_sizes=(K33, K13), strides=(S12, S11)
            ),
            StageSpec(base_filters=24, expand_filters=(48,), kernel_sizes=(K53,), strides=(S11,)),
            StageSpec(base_filters=24, expand_filters=(64,), kernel_sizes=(K33,), strides=(S11,)),
            StageSpec(base_filters=32, expand_filters=(72,), kernel_sizes=(K53,), strides=(S12,)),
        ),
        head=HeadSpec(project_filters=48, head_filters=64),
    ),
}


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a model that travel with its weights (see :mod:`model.io.weights`)."""

    name: str
    backbone: str
    mode: str  # "base" or "stream"
    input_size: int
    frame_rate: float
    clip_frames: int
    eval_min_size: int
    use_positional_encoding: bool = False
    dropout: float = 0.2
    extra: dict = field(default_factory=dict)
