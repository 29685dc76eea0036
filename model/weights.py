"""Weights files: safetensors plus the metadata that rebuilds the model, and fetching official weights.

A weights file carries its construction arguments (model name, number of classes, label names,
input size, frame rate, clip length, mode options) in the safetensors header, so
:func:`load_model` needs nothing else. ``python -m model.weights fetch movinet_a0_stream``
downloads an official TF2 checkpoint tarball, checks it, converts it and caches the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .movinet import MoViNet
from .registry import build_model, parse_name

WEIGHTS_FORMAT = "movinet-weights"
WEIGHTS_FORMAT_VERSION = "1"
BUNDLED_DIR = Path(__file__).parent / "weights"
OFFICIAL_BASE_URL = "https://storage.googleapis.com/tf_model_garden/vision/movinet"
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


def load_state_dict_strict(net: MoViNet, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` into ``net``; raise ``ValueError`` naming every missing, unexpected or mis-shaped tensor."""
    expected = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
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


def load_model(path: str | Path, **mode_overrides) -> MoViNet:
    """Rebuild a model from a weights file alone."""
    meta = read_metadata(path)
    info = meta["info"]
    mode = {k: v for k, v in meta["mode"].items() if k not in ("causal", "conv_type", "se_type", "activation", "gating_activation")}
    mode.update(mode_overrides)
    info_overrides = {k: info[k] for k in ("input_size", "frame_rate", "clip_frames", "eval_min_size", "extra") if k in info}
    net = build_model(meta["model"], meta["num_classes"], labels=meta["labels"], info_overrides=info_overrides, **mode)
    from safetensors.torch import load_file

    load_state_dict_strict(net, load_file(str(path)), str(path))
    return net.eval()


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


# --- fetching official checkpoints ----------------------------------------------------------------


def official_url(name: str, base_url: str | None = None) -> str:
    parse_name(name)
    base = (base_url or os.environ.get("MOVINET_WEIGHTS_BASE_URL") or OFFICIAL_BASE_URL).rstrip("/")
    return f"{base}/{name}.tar.gz"


def _download(url: str, dest: Path, quiet: bool = False) -> str:
    from tqdm import tqdm

    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}", disable=quiet, file=sys.stderr) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not str(target).startswith(str(dest.resolve())) or member.issym() or member.islnk():
                raise ValueError(f"{archive.name}: refusing unsafe member {member.name!r}")
        tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(dest)


def find_checkpoint_dir(root: Path) -> Path:
    """The folder inside an unpacked tarball that holds ``checkpoint`` / ``ckpt-*.index``."""
    for path in sorted(root.rglob("*.index")):
        return path.parent
    raise ValueError(f"no TF checkpoint (*.index) found under {root}")


def fetch(name: str, *, base_url: str | None = None, sha256: str | None = None, force: bool = False, quiet: bool = False) -> Path:
    """Download, verify, convert and cache the official Kinetics-600 weights of ``name``."""
    from .convert import convert_checkpoint

    out = cached_path(name)
    if out.is_file() and not force:
        return out
    url = official_url(name, base_url)
    with tempfile.TemporaryDirectory(prefix="movinet-fetch-") as tmp:
        archive = Path(tmp) / f"{name}.tar.gz"
        try:
            digest = _download(url, archive, quiet)
        except OSError as error:
            raise ValueError(f"could not download {url}: {error}") from None
        if sha256 and digest != sha256.lower():
            raise ValueError(f"{url}: sha256 {digest} does not match the expected {sha256}")
        try:
            _safe_extract(archive, Path(tmp) / "unpacked")
        except tarfile.TarError as error:
            raise ValueError(f"{url} is not a valid tar.gz archive: {error}") from None
        ckpt_dir = find_checkpoint_dir(Path(tmp) / "unpacked")
        net = convert_checkpoint(ckpt_dir, name)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        save_weights(net, partial, extra={"source_url": url, "source_sha256": digest})
        shutil.move(partial, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.weights", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download + convert + cache official Kinetics-600 weights")
    f.add_argument("model", help="e.g. movinet_a0_stream")
    f.add_argument("--base-url", help=f"where the tarballs live (default {OFFICIAL_BASE_URL}, or $MOVINET_WEIGHTS_BASE_URL)")
    f.add_argument("--sha256", help="expected sha256 of the tarball")
    f.add_argument("--force", action="store_true", help="download again even if cached")
    f.add_argument("--quiet", action="store_true")
    ls = sub.add_parser("list", help="list models and the weights available offline")
    ls.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        try:
            path = fetch(args.model, base_url=args.base_url, sha256=args.sha256, force=args.force, quiet=args.quiet)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(path)
        return 0
    from .registry import list_models

    for name in list_models():
        tags = available_weights(name)
        if tags or args.all:
            print(f"{name}\t{','.join(tags) or '-'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
