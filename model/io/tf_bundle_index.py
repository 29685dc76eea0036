"""The ``.index`` file of a TensorFlow tensor bundle, decoded with numpy and ``struct`` alone.

This module owns the index's two layers of encoding:

- the LevelDB-format SSTable: the 48-byte footer (meta-index and index block handles, magic
  ``0xdb4775248b80fb57``), blocks of prefix-compressed keys with restart points and a 5-byte
  trailer (compression type, masked CRC32C, checked here);
- what the table holds: the ``""`` entry a ``BundleHeaderProto`` and every other entry a
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, CRC of the tensor bytes), both parsed
  with a small protobuf wire-format reader (:func:`parse_message`, also what
  :mod:`model.io.tf_saved_model` reads the object graph with), and the TF dtype enum those entries use.

:func:`read_bundle_index` is the way in; reading tensor bytes from the data shards is
:mod:`model.io.tf_checkpoint`'s. Anything malformed raises ``ValueError`` naming the file and what
is wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .crc32c import crc32c, unmask_crc

__all__ = [
    "DTYPES",
    "DT_BFLOAT16",
    "DT_STRING",
    "BundleEntry",
    "BundleIndex",
    "parse_message",
    "read_bundle_index",
    "read_varint",
]

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked CRC32C
_NO_COMPRESSION, _SNAPPY_COMPRESSION = 0, 1
_HEADER_KEY = b""

# tensorflow/core/framework/types.proto: enum value -> (name, numpy dtype or None)
DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    14: ("bfloat16", np.dtype("<u2")),  # widened to float32 after reading
    17: ("uint16", np.dtype("<u2")),
    19: ("float16", np.dtype("<f2")),
    22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
}
DT_STRING = 7
DT_BFLOAT16 = 14


# --------------------------------------------------------------------------------------------------
# Protobuf wire format (only what the bundle protos use)


def read_varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError(f"{where}: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError(f"{where}: varint longer than 10 bytes")


def _to_int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_message(data: bytes, where: str) -> dict[int, list]:
    """Field number -> list of values (ints for varint/fixed, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = read_varint(data, pos, where)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = read_varint(data, pos, where)
        elif wire_type == 1:
            if pos + 8 > len(data):
                raise ValueError(f"{where}: truncated fixed64 field {number}")
            (value,) = struct.unpack_from("<Q", data, pos)
            pos += 8
        elif wire_type == 2:
            length, pos = read_varint(data, pos, where)
            if pos + length > len(data):
                raise ValueError(f"{where}: field {number} runs past the end of the message")
            value = bytes(data[pos : pos + length])
            pos += length
        elif wire_type == 5:
            if pos + 4 > len(data):
                raise ValueError(f"{where}: truncated fixed32 field {number}")
            (value,) = struct.unpack_from("<I", data, pos)
            pos += 4
        else:
            raise ValueError(f"{where}: unsupported protobuf wire type {wire_type} (field {number})")
        fields.setdefault(number, []).append(value)
    return fields


def _last(fields: dict[int, list], number: int, default=0):
    values = fields.get(number)
    return values[-1] if values else default


@dataclass(frozen=True)
class BundleEntry:
    """A decoded BundleEntryProto."""

    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    masked_crc32c: int | None
    sliced: bool

    @property
    def dtype_name(self) -> str:
        return DTYPES.get(self.dtype_enum, (f"dtype_enum_{self.dtype_enum}", None))[0]


def _parse_shape(data: bytes, where: str) -> tuple[int, ...]:
    fields = parse_message(data, where)
    if _last(fields, 3):
        raise ValueError(f"{where}: tensor has unknown rank")
    dims = []
    for dim in fields.get(2, []):
        size = _to_int64(_last(parse_message(dim, where), 1))
        if size < 0:
            raise ValueError(f"{where}: tensor has an unknown dimension ({size})")
        dims.append(size)
    return tuple(dims)


def _parse_entry(data: bytes, where: str) -> BundleEntry:
    fields = parse_message(data, where)
    return BundleEntry(
        dtype_enum=_last(fields, 1),
        shape=_parse_shape(_last(fields, 2, b""), where),
        shard_id=_last(fields, 3),
        offset=_to_int64(_last(fields, 4)),
        size=_to_int64(_last(fields, 5)),
        masked_crc32c=_last(fields, 6, None),
        sliced=bool(fields.get(7)),
    )


# --------------------------------------------------------------------------------------------------
# The SSTable (LevelDB table format)


def _read_block_handle(data: bytes, pos: int, where: str) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(data, pos, where)
    size, pos = read_varint(data, pos, where)
    return (offset, size), pos


def _read_block(table: bytes, handle: tuple[int, int], where: str) -> bytes:
    offset, size = handle
    end = offset + size + _BLOCK_TRAILER_SIZE
    if end > len(table):
        raise ValueError(
            f"{where}: block at {offset} (+{size}) runs past the end of the file ({len(table)} bytes)"
        )
    contents = table[offset : offset + size]
    compression = table[offset + size]
    (stored,) = struct.unpack_from("<I", table, offset + size + 1)
    actual = crc32c(table[offset : offset + size + 1])
    if unmask_crc(stored) != actual:
        raise ValueError(f"{where}: block at {offset} is corrupted (CRC32C mismatch)")
    if compression == _SNAPPY_COMPRESSION:
        raise ValueError(
            f"{where}: block at {offset} is snappy-compressed, which this reader does not support"
        )
    if compression != _NO_COMPRESSION:
        raise ValueError(f"{where}: block at {offset} has unknown compression type {compression}")
    return contents


def _iter_block(block: bytes, where: str) -> Iterator[tuple[bytes, bytes]]:
    if len(block) < 4:
        raise ValueError(f"{where}: block too small ({len(block)} bytes)")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    entries_end = len(block) - 4 * (num_restarts + 1)
    if entries_end < 0:
        raise ValueError(f"{where}: block restart array ({num_restarts}) is larger than the block")
    pos, key = 0, b""
    while pos < entries_end:
        shared, pos = read_varint(block, pos, where)
        unshared, pos = read_varint(block, pos, where)
        value_length, pos = read_varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_length > entries_end:
            raise ValueError(f"{where}: corrupted block entry at offset {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_length]
        pos += value_length


@dataclass(frozen=True)
class BundleIndex:
    """A decoded ``.index`` file: how many data shards the bundle has, and every tensor's entry."""

    num_shards: int
    entries: dict[str, BundleEntry]


def read_bundle_index(index_path: Path) -> BundleIndex:
    """Decode ``<prefix>.index``: the bundle header and every tensor's entry, keyed by tensor name."""
    where = str(index_path)
    try:
        table = index_path.read_bytes()
    except OSError as error:
        raise ValueError(f"{where}: cannot read checkpoint index ({error.strerror})") from error
    if len(table) < _FOOTER_SIZE:
        raise ValueError(f"{where}: too short to be a checkpoint index ({len(table)} bytes)")
    footer = table[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, _FOOTER_SIZE - 8)
    if magic != _TABLE_MAGIC:
        raise ValueError(f"{where}: bad magic number {magic:#018x}: not a TF checkpoint index (or truncated)")
    _meta_handle, pos = _read_block_handle(footer, 0, where)
    index_handle, _ = _read_block_handle(footer, pos, where)

    header: dict[int, list] | None = None
    entries: dict[str, BundleEntry] = {}
    for _last_key, handle_bytes in _iter_block(_read_block(table, index_handle, where), where):
        data_handle, _ = _read_block_handle(handle_bytes, 0, where)
        for key, value in _iter_block(_read_block(table, data_handle, where), where):
            if key == _HEADER_KEY:
                header = parse_message(value, f"{where} (bundle header)")
                continue
            name = key.decode("utf-8", errors="replace")
            entries[name] = _parse_entry(value, f"{where} (entry {name!r})")
    if header is None:
        raise ValueError(f"{where}: no bundle header entry; not a TF2 checkpoint index")
    if _last(header, 2) != 0:
        raise ValueError(f"{where}: big-endian checkpoints are not supported")
    return BundleIndex(num_shards=_last(header, 1, 1), entries=entries)
