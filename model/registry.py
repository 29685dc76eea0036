"""The model registry: names like ``movinet_a0_stream`` -> a built :class:`~model.movinet.MoViNet`.

Per-backbone facts (input size, frame rate, training clip length, eval resize, dropout) come from
the official configs (``configs/yaml/movinet_*_k600_8x8.yaml``); see the reference notes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .movinet import MoViNet
from .specs import BASE, BLOCK_SPECS, STREAM, ModelInfo, ModeSpec

# backbone -> (input_size, frame_rate, clip_frames, eval_min_size, dropout_base, dropout_stream)
_BACKBONE_FACTS = {
    "a0": (172, 5.0, 50, 192, 0.2, 0.2),
    "a1": (172, 5.0, 50, 192, 0.5, 0.2),
    "a2": (224, 5.0, 50, 256, 0.5, 0.5),
    "a3": (256, 12.0, 120, 288, 0.5, 0.5),
    "a4": (290, 8.0, 80, 320, 0.5, 0.5),
    "a5": (320, 12.0, 120, 368, 0.5, 0.5),
    "t0": (160, 2.5, 25, 176, 0.2, 0.2),
    "test": (64, 5.0, 16, 72, 0.0, 0.0),
}
_POSITIONAL_ENCODING = {"a3", "a4", "a5"}

LABELS_DIR = Path(__file__).parent / "labels"


def list_models() -> list[str]:
    return [f"movinet_{backbone}_{mode}" for backbone in _BACKBONE_FACTS for mode in ("base", "stream")]


def parse_name(name: str) -> tuple[str, str]:
    parts = name.split("_")
    if len(parts) != 3 or parts[0] != "movinet" or parts[1] not in BLOCK_SPECS or parts[2] not in ("base", "stream"):
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return parts[1], parts[2]


def model_info(name: str) -> ModelInfo:
    backbone, mode = parse_name(name)
    size, fps, clip, min_size, drop_base, drop_stream = _BACKBONE_FACTS[backbone]
    return ModelInfo(
        name=name,
        backbone=backbone,
        mode=mode,
        input_size=size,
        frame_rate=fps,
        clip_frames=clip,
        eval_min_size=min_size,
        use_positional_encoding=mode == "stream" and backbone in _POSITIONAL_ENCODING,
        dropout=drop_base if mode == "base" else drop_stream,
    )


def mode_spec(info: ModelInfo, **overrides) -> ModeSpec:
    base = BASE if info.mode == "base" else STREAM
    fields = {f.name for f in dataclasses.fields(ModeSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown model options {unknown}; options are {sorted(fields)}")
    overrides.setdefault("use_positional_encoding", info.use_positional_encoding)
    overrides.setdefault("dropout", info.dropout)
    return dataclasses.replace(base, **overrides)


def kinetics600_labels() -> list[str]:
    path = LABELS_DIR / "kinetics600.txt"
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def build_model(
    name: str,
    num_classes: int = 600,
    labels: list[str] | None = None,
    info_overrides: dict | None = None,
    **mode_overrides,
) -> MoViNet:
    info = model_info(name)
    if info_overrides:
        info = dataclasses.replace(info, **info_overrides)
    if labels is None and num_classes == 600 and (LABELS_DIR / "kinetics600.txt").exists():
        labels = kinetics600_labels()
    backbone, _ = parse_name(name)
    return MoViNet(BLOCK_SPECS[backbone], mode_spec(info, **mode_overrides), num_classes, info, labels)
