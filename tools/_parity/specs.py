"""Our block specs as the official code's: ``model/specs.py`` read without PyTorch, then translated.

This module owns loading ``model/specs.py`` by path, translating a ``BackboneSpec`` into the
official ``StemSpec``/``MovinetBlockSpec``/``HeadSpec`` tuple, registering our tiny ``test``
backbone in the official ``BLOCK_SPECS``, and reporting which of our specs equal the official ones.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .variants import OFFICIAL_BACKBONES

REPO_ROOT = Path(__file__).resolve().parents[2]
SPECS_PATH = REPO_ROOT / "model" / "specs.py"


def load_project_specs():
    """Load ``model/specs.py`` by path: importing the ``model`` package would pull in PyTorch."""
    spec = importlib.util.spec_from_file_location("_project_specs", SPECS_PATH)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {SPECS_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def to_official_spec(backbone_spec, movinet):
    """Translate one of our ``BackboneSpec`` objects into the official tuple of block specs."""
    blocks = [
        movinet.StemSpec(
            filters=backbone_spec.stem.filters,
            kernel_size=tuple(backbone_spec.stem.kernel_size),
            strides=tuple(backbone_spec.stem.strides),
        )
    ]
    for stage in backbone_spec.stages:
        blocks.append(
            movinet.MovinetBlockSpec(
                base_filters=stage.base_filters,
                expand_filters=tuple(stage.expand_filters),
                kernel_sizes=tuple(tuple(k) for k in stage.kernel_sizes),
                strides=tuple(tuple(s) for s in stage.strides),
            )
        )
    blocks.append(
        movinet.HeadSpec(
            project_filters=backbone_spec.head.project_filters,
            head_filters=backbone_spec.head.head_filters,
        )
    )
    return tuple(blocks)


def _normalise(blocks) -> list:
    out = []
    for block in blocks:
        fields = {k: v for k, v in vars(block).items()}
        for key, value in fields.items():
            if isinstance(value, (list, tuple)):
                fields[key] = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
        out.append((type(block).__name__, tuple(sorted(fields.items()))))
    return out


def register_specs(movinet) -> dict[str, bool]:
    """Register ``test`` into the official registry; report which of our specs equal the official."""
    specs = load_project_specs()
    movinet.BLOCK_SPECS["test"] = to_official_spec(specs.BLOCK_SPECS["test"], movinet)
    matches = {}
    for name in OFFICIAL_BACKBONES + ("t0",):
        ours = _normalise(to_official_spec(specs.BLOCK_SPECS[name], movinet))
        matches[name] = ours == _normalise(movinet.BLOCK_SPECS[name])
    return matches
