"""Read TensorFlow 2 checkpoints with numpy alone (no TensorFlow, no protobuf package).

This module is the front door for the on-disk *tensor bundle* format that
``tf.train.Checkpoint.save`` writes and the official MoViNet releases ship::

    <dir>/checkpoint                       text: model_checkpoint_path: "ckpt-1"
    <prefix>.index                         LevelDB-format SSTable: tensor name -> BundleEntryProto
    <prefix>.data-00000-of-00001           the raw tensor bytes, one or more shards

It owns finding a checkpoint's ``<prefix>`` (from a directory, a prefix or the ``.index`` file),
listing its variables, and reading their bytes from the data shards into numpy arrays: checked
against the CRC32C stored in their entry, bfloat16 widened to float32, string tensors decoded.
Decoding the ``.index`` table itself is :mod:`model.io.tf_bundle_index`'s, and the checksum
:mod:`model.io.crc32c`'s (re-exported here as :func:`crc32c`).

Anything malformed raises ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .crc32c import crc32c, unmask_crc
from .tf_bundle_index import DT_BFLOAT16, DT_STRING, DTYPES, BundleEntry, read_bundle_index, read_varint

__all__ = [
    "crc32c",
    "list_tf_variables",
    "read_tf_checkpoint",
    "resolve_checkpoint_prefix",
]

PathLike = str | os.PathLike


def _text_proto_string(raw: str) -> str:
    # text-format protos C-escape quotes, backslashes and non-ASCII bytes (as \ooo)
    try:
        return raw.encode("ascii").decode("unicode_escape").encode("latin-1").decode("utf-8")
    except UnicodeError:
        return raw


def resolve_checkpoint_prefix(path: PathLike) -> Path:
    """The ``<prefix>`` whose ``.index``/``.data-*`` files hold the checkpoint at ``path``.

    ``path`` is a checkpoint directory (its ``checkpoint`` file's ``model_checkpoint_path``, else
    the highest-numbered ``*-N.index``), a prefix such as ``dir/ckpt-1``, or the ``.index`` file.
    """
    path = Path(path)
    if path.is_dir():
        state_file = path / "checkpoint"
        if state_file.is_file():
            match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state_file.read_text(), re.M)
            if match:
                recorded = Path(_text_proto_string(match.group(1)))
                # checkpoints move: an absolute path from another machine still names the file here
                for candidate in (path / recorded, path / recorded.name):
                    if Path(f"{candidate}.index").is_file():
                        return candidate
        indexes = sorted(path.glob("*.index"))
        if not indexes:
            raise ValueError(f"{path}: no checkpoint here (no 'checkpoint' file and no *.index file)")

        def step(index: Path) -> tuple[int, str]:
            number = re.search(r"-(\d+)$", index.stem)
            return (int(number.group(1)) if number else -1, index.name)

        return path / max(indexes, key=step).stem
    if path.suffix == ".index" and path.is_file():
        return path.with_suffix("")
    if Path(f"{path}.index").is_file():
        return path
    raise ValueError(f"{path}: not a checkpoint directory, prefix or .index file")


def list_tf_variables(path: PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor name in the checkpoint -> (dtype name, shape), like ``tf.train.list_variables``."""
    prefix = resolve_checkpoint_prefix(path)
    entries = read_bundle_index(Path(f"{prefix}.index")).entries
    return {name: (entry.dtype_name, entry.shape) for name, entry in sorted(entries.items())}


def read_tf_checkpoint(
    path: PathLike, *, include_strings: bool = False, verify_checksums: bool = True
) -> dict[str, np.ndarray]:
    """Load every tensor of a TF2 checkpoint as numpy arrays, keyed by checkpoint name.

    Keys are the object-graph paths (``model/.../kernel/.ATTRIBUTES/VARIABLE_VALUE``). Arrays keep
    their dtype except bfloat16, which is widened to float32 (exactly). String tensors such as
    ``_CHECKPOINTABLE_OBJECT_GRAPH`` are skipped unless ``include_strings`` (then they are object
    arrays of ``bytes``). Raises ``ValueError`` for anything malformed or unsupported.
    """
    prefix = resolve_checkpoint_prefix(path)
    index_path = Path(f"{prefix}.index")
    index = read_bundle_index(index_path)
    entries, num_shards = index.entries, index.num_shards
    shards: dict[int, BinaryIO] = {}
    tensors: dict[str, np.ndarray] = {}
    try:
        for name, entry in sorted(entries.items()):
            if entry.dtype_enum == DT_STRING and not include_strings:
                continue
            where = f"{index_path} (tensor {name!r})"
            if entry.sliced:
                raise ValueError(f"{where}: partitioned (sliced) variables are not supported")
            if entry.dtype_enum not in DTYPES:
                raise ValueError(f"{where}: unsupported dtype {entry.dtype_name}")
            if not 0 <= entry.shard_id < num_shards:
                raise ValueError(f"{where}: shard {entry.shard_id} out of range (bundle has {num_shards})")
            if entry.shard_id not in shards:
                shard_path = Path(f"{prefix}.data-{entry.shard_id:05d}-of-{num_shards:05d}")
                try:
                    shards[entry.shard_id] = open(shard_path, "rb")  # noqa: SIM115 - closed below
                except OSError as error:
                    raise ValueError(
                        f"{shard_path}: data shard missing or unreadable ({error.strerror})"
                    ) from error
            handle = shards[entry.shard_id]
            raw = _read_bytes(handle, entry, name)
            if verify_checksums and entry.masked_crc32c is not None and entry.dtype_enum != DT_STRING:
                if crc32c(raw) != unmask_crc(entry.masked_crc32c):
                    raise ValueError(f"{handle.name} (tensor {name!r}): data corrupted (CRC32C mismatch)")
            tensors[name] = _decode(raw, entry, where)
    finally:
        for handle in shards.values():
            handle.close()
    return tensors


def _read_bytes(handle: BinaryIO, entry: BundleEntry, name: str) -> bytearray:
    where = f"{handle.name} (tensor {name!r})"
    if entry.offset < 0 or entry.size < 0:
        raise ValueError(f"{where}: negative offset or size in its index entry")
    handle.seek(entry.offset)
    raw = bytearray(entry.size)
    got = handle.readinto(raw)
    if got != entry.size:
        raise ValueError(
            f"{where}: data file truncated: wanted {entry.size} bytes at offset {entry.offset}, got {got}"
        )
    return raw


def _decode(raw: bytearray, entry: BundleEntry, where: str) -> np.ndarray:
    count = int(np.prod(entry.shape, dtype=np.int64))
    if entry.dtype_enum == DT_STRING:
        return _decode_strings(bytes(raw), count, entry.shape, where)
    _name, dtype = DTYPES[entry.dtype_enum]
    if count * dtype.itemsize != len(raw):
        raise ValueError(
            f"{where}: size mismatch: {entry.dtype_name}{list(entry.shape)} needs "
            f"{count * dtype.itemsize} bytes, the entry records {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
    if entry.dtype_enum == DT_BFLOAT16:
        # bfloat16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _decode_strings(raw: bytes, count: int, shape: tuple[int, ...], where: str) -> np.ndarray:
    # layout: varint64 length per element, a 4-byte masked CRC of the lengths, then the bytes
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = read_varint(raw, pos, where)
        lengths.append(length)
    pos += 4
    values = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        if pos + length > len(raw):
            raise ValueError(f"{where}: string tensor data is truncated")
        values[i] = raw[pos : pos + length]
        pos += length
    return values.reshape(shape)
