"""Fetch official weights: download, verify, convert and cache an official TF2 checkpoint.

    python -m model.weights fetch movinet_a0_stream [--sha256 HEX]
    python -m model.weights list [--all]

This module owns the download (with an optional sha256 check), the safe unpacking of an official
``<name>.tar.gz`` release and the command line above. The conversion is :mod:`model.io.convert`;
the result goes to the cache of :mod:`model.io.weights`, where :func:`model.resolve_weights` finds
it under the tag ``kinetics600``. ``model/weights.py`` only runs :func:`main`, so the command keeps
the name the documentation has always used.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from ..registry import list_models, parse_name
from .convert import convert_checkpoint
from .weights import available_weights, cached_path, save_weights

OFFICIAL_BASE_URL = "https://storage.googleapis.com/tf_model_garden/vision/movinet"


def official_url(name: str, base_url: str | None = None) -> str:
    parse_name(name)
    base = (base_url or os.environ.get("MOVINET_WEIGHTS_BASE_URL") or OFFICIAL_BASE_URL).rstrip("/")
    return f"{base}/{name}.tar.gz"


def _download(url: str, dest: Path, quiet: bool = False) -> str:
    """Stream ``url`` to ``dest``; the sha256 of what arrived. A body shorter than its
    Content-Length (a server that went away mid-transfer) raises ``OSError``."""
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {Path(url).name}", disable=quiet, file=sys.stderr) as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise OSError(f"the connection closed after {received} of {total} bytes")
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
    out = cached_path(name)
    if out.is_file() and not force:
        return out
    url = official_url(name, base_url)
    with tempfile.TemporaryDirectory(prefix="movinet-fetch-") as tmp:
        archive = Path(tmp) / f"{name}.tar.gz"
        try:
            digest = _download(url, archive, quiet)
        except (OSError, http.client.HTTPException) as error:  # IncompleteRead is an HTTPException
            raise ValueError(f"could not download {url}: {error}") from None
        if sha256 and digest != sha256.lower():
            raise ValueError(f"{url}: sha256 {digest} does not match the expected {sha256}")
        try:
            _safe_extract(archive, Path(tmp) / "unpacked")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:  # a cut gzip stream: EOFError
            raise ValueError(f"{url} is not a valid tar.gz archive: {error}") from None
        ckpt_dir = find_checkpoint_dir(Path(tmp) / "unpacked")
        net = convert_checkpoint(ckpt_dir, name)
        # Written next to its final name, then renamed: the cache never holds a half-written
        # .safetensors, and two processes fetching into one shared cache do not collide.
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            handle, partial_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
        except OSError as error:
            raise ValueError(f"cannot write to the weights cache {out.parent}: {error.strerror or error}") from None
        os.close(handle)
        partial = Path(partial_name)
        try:
            save_weights(net, partial, extra={"source_url": url, "source_sha256": digest})
            partial.chmod(0o644)  # mkstemp's 0600 would hide a file baked into an image as root
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
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
    for name in list_models():
        tags = available_weights(name)
        if tags or args.all:
            print(f"{name}\t{','.join(tags) or '-'}")
    return 0
