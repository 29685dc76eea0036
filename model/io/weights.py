"""Weights files: safetensors plus the metadata that rebuilds the model.

A weights file carries its construction arguments (model name, number of classes, label names,
input size, frame rate, clip length, mode options) in the safetensors header, so
:func:`load_model` needs nothing else. This module owns that format (:func:`save_weights`,
:func:`read_metadata`, :func:`load_model`), the strict load every weights source goes through
(:func:`load_state_dict_strict`; :func:`load_backbone` loads all but a new head, for
fine-tuning), and where weights live: bundled with the package or cached by
:mod:`model.io.fetch` (:func:`resolve_weights`, :func:`available_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..movinet import MoViNet
from ..registry import build_model, parse_name

WEIGHTS_FORMAT = "movinet-weights"
WEIGHTS_FORMAT_VERSION = "1"
BUNDLED_DIR = Path(__file__).parent.parent / "weights"  # model/weights/, package data
OFFICIAL_TAG = "kinetics600"


def cache_dir() -> Path:
    root = os.environ.get("MOVINET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "movinet"
    return Path(root)


def save_weights(net: MoViNet, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``net``'s weights and construction metadata to ``path`` (safetensors)."""
    if net.info is None:
        raise ValueError("the model has no ModelInfo; build it with model.create_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": WEIGHTS_FORMAT_VERSION,
        "model": net.info.name,
        "num_classes": str(net.num_classes),
        "labels": json.dumps(net.labels),
        "info": json.dumps(dataclasses.asdict(net.info)),
        "mode": json.dumps(dataclasses.asdict(net.mode)),
        "extra": json.dumps(extra or {}),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict:
    """The decoded metadata of a weights file (``model``, ``num_classes``, ``labels``, ``info``, ``mode``, ``extra``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a safetensors file: {error}") from None
    if raw.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a MoViNet weights file (format={raw.get('format')!r})")
    return {
        "model": raw["model"],
        "num_classes": int(raw["num_classes"]),
        "labels": json.loads(raw["labels"]),
        "info": json.loads(raw["info"]),
        "mode": json.loads(raw["mode"]),
        "extra": json.loads(raw.get("extra", "{}")),
    }


def load_state_dict_strict(
    net: MoViNet, tensors: dict[str, torch.Tensor], source: str, fresh: Sequence[str] = ()
) -> list[str]:
    """Copy ``tensors`` into ``net``; raise ``ValueError`` naming every missing, unexpected or mis-shaped tensor.

    Keys under a prefix in ``fresh`` (``"classifier.logits."``: a new head) keep ``net``'s own
    initialisation and may be absent or any shape in ``tensors``; every other key is strict.
    Returns the keys left as initialised, sorted.
    """
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}

    def is_fresh(key: str) -> bool:
        return any(key.startswith(prefix) for prefix in fresh)

    kept = sorted(k for k in expected if is_fresh(k))
    expected = {k: v for k, v in expected.items() if not is_fresh(k)}
    tensors = {k: v for k, v in tensors.items() if not is_fresh(k)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [
        f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not fit {net.name}:"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected))
        if mismatched:
            lines.append(f"  wrong shape ({len(mismatched)}): " + "; ".join(mismatched))
        raise ValueError("\n".join(lines))
    net.load_state_dict({**net.state_dict(), **tensors}, strict=True)
    return kept


def _build_from_metadata(meta: dict, num_classes: int, labels: list[str], info_overrides: dict, **mode_overrides) -> MoViNet:
    # The structural fields follow from the model name; the rest (hard_sigmoid, dropout, ...) is the file's.
    mode = {k: v for k, v in meta["mode"].items() if k not in ("causal", "conv_type", "se_type", "activation", "gating_activation")}
    mode.update(mode_overrides)
    return build_model(meta["model"], num_classes, labels=labels, info_overrides=info_overrides, **mode)


def load_model(path: str | Path, **mode_overrides) -> MoViNet:
    """Rebuild a model from a weights file alone."""
    meta = read_metadata(path)
    info = meta["info"]
    info_overrides = {k: info[k] for k in ("input_size", "frame_rate", "clip_frames", "eval_min_size", "extra") if k in info}
    net = _build_from_metadata(meta, meta["num_classes"], meta["labels"], info_overrides, **mode_overrides)
    load_state_dict_strict(net, load_file(str(path)), str(path))
    return net.eval()


NEW_HEAD = ("classifier.logits.",)  # the classifier's last layer: one row per class


def load_backbone(
    path: str | Path, labels: list[str], info_overrides: dict | None = None, fresh: Sequence[str] = NEW_HEAD
) -> tuple[MoViNet, list[str]]:
    """The model of a weights file with a new head for ``labels``: every tensor but ``fresh`` ones from the file.

    The load is strict on everything else (a file of another architecture is refused, naming the
    tensors). Returns the model (in train mode) and the keys that were re-initialised.
    """
    meta = read_metadata(path)
    info = meta["info"]
    overrides = {k: info[k] for k in ("input_size", "frame_rate", "clip_frames", "eval_min_size") if k in info}
    overrides.update(info_overrides or {})
    net = _build_from_metadata(meta, len(labels), list(labels), overrides)
    fresh_keys = load_state_dict_strict(net, load_file(str(path)), str(path), fresh=fresh)
    return net.train(), fresh_keys


def bundled_path(name: str, tag: str) -> Path:
    return BUNDLED_DIR / f"{name}_{tag}.safetensors"


def cached_path(name: str, tag: str = OFFICIAL_TAG) -> Path:
    return cache_dir() / f"{name}_{tag}.safetensors"


def available_weights(name: str) -> list[str]:
    """Weight tags that load offline for ``name`` (bundled files and the local cache)."""
    parse_name(name)
    tags = []
    for folder in (BUNDLED_DIR, cache_dir()):
        for path in sorted(folder.glob(f"{name}_*.safetensors")):
            tag = path.name[len(name) + 1 : -len(".safetensors")]
            if tag not in tags:
                tags.append(tag)
    return tags


def resolve_weights(name: str, weights: str) -> Path:
    """Turn a tag (``"motion"``, ``"kinetics600"``) or a path into a weights file path."""
    for candidate in (bundled_path(name, weights), cached_path(name, weights)):
        if candidate.is_file():
            return candidate
    path = Path(weights)
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise ValueError(f"weights file {path} does not exist")
        return path
    hint = f"; fetch the official ones with `python -m model.weights fetch {name}`" if weights == OFFICIAL_TAG else ""
    available = available_weights(name)
    raise ValueError(f"no weights {weights!r} for {name} (available here: {available or 'none'}){hint}")
