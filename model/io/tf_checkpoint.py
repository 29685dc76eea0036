"""Read TensorFlow 2 checkpoints with numpy alone (no TensorFlow, no protobuf package).

This module owns the on-disk *tensor bundle* format that ``tf.train.Checkpoint.save`` writes and
the official MoViNet releases ship::

    <dir>/checkpoint                       text: model_checkpoint_path: "ckpt-1"
    <prefix>.index                         LevelDB-format SSTable: tensor name -> BundleEntryProto
    <prefix>.data-00000-of-00001           the raw tensor bytes, one or more shards

The ``.index`` table is decoded here by hand: the 48-byte footer (meta-index and index block
handles, magic ``0xdb4775248b80fb57``), blocks of prefix-compressed keys with restart points and a
5-byte trailer (compression type, masked CRC32C), the ``""`` entry holding a ``BundleHeaderProto``
and every other entry a ``BundleEntryProto``, both parsed with a small protobuf wire-format reader.
Tensor bytes are checked against the CRC32C stored in their entry.

Anything malformed raises ``ValueError`` naming the file and what is wrong.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "crc32c",
    "list_tf_variables",
    "read_tf_checkpoint",
    "resolve_checkpoint_prefix",
]

PathLike = str | os.PathLike

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # 1 byte compression type + 4 bytes masked CRC32C
_NO_COMPRESSION, _SNAPPY_COMPRESSION = 0, 1
_HEADER_KEY = b""

# tensorflow/core/framework/types.proto: enum value -> (name, numpy dtype or None)
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
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
_DT_STRING = 7
_DT_BFLOAT16 = 14


# --------------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), as LevelDB and TensorFlow use it


def _make_crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_CRC_TABLE = _make_crc_table()
_CRC_TABLE_LIST = [int(v) for v in _CRC_TABLE]
_MASK_DELTA = 0xA282EAD8
_SCALAR_CRC_LIMIT = 4096  # below this many bytes the plain byte loop is fastest
_MAX_CRC_LANES = 16384


def _crc_register_scalar(register: int, data) -> int:
    table = _CRC_TABLE_LIST
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _zero_shift_tables(length: int) -> list[list[int]]:
    """Tables applying "advance the CRC register over ``length`` zero bytes" one byte at a time.

    The CRC register update is linear over GF(2), so that advance is a 32x32 bit matrix; four
    256-entry tables (one per register byte) apply it with four lookups.
    """
    basis = (np.arange(256, dtype=np.uint32)[None, :] << (8 * np.arange(4, dtype=np.uint32))[:, None]).ravel()
    registers = basis.copy()
    for _ in range(length):
        registers = _CRC_TABLE[registers & 0xFF] ^ (registers >> 8)
    return [[int(v) for v in registers[256 * j : 256 * (j + 1)]] for j in range(4)]


def _crc_register_lanes(register: int, data: np.ndarray) -> int:
    """Pure-Python CRC32C is ~1 MB/s; split the data into lanes and advance them all at once.

    Each lane's CRC is computed from register 0 (lane 0 from the real register) with one numpy
    operation per byte position, then the lanes are chained: crc(A || B) = shift_len(B)(crc(A))
    xor crc_from_zero(B), which holds because the update is linear.
    """
    num_lanes = min(_MAX_CRC_LANES, len(data) // 256)
    lane_length = len(data) // num_lanes
    body = num_lanes * lane_length
    columns = np.ascontiguousarray(data[:body].reshape(num_lanes, lane_length).T)  # (L, K)
    lanes = np.zeros(num_lanes, dtype=np.uint32)
    lanes[0] = register
    for row in columns:
        lanes = _CRC_TABLE[(lanes ^ row) & 0xFF] ^ (lanes >> 8)

    t0, t1, t2, t3 = _zero_shift_tables(lane_length)
    lane_values = lanes.tolist()
    register = lane_values[0]
    for value in lane_values[1:]:
        register = (
            t0[register & 0xFF]
            ^ t1[(register >> 8) & 0xFF]
            ^ t2[(register >> 16) & 0xFF]
            ^ t3[register >> 24]
            ^ value
        )
    return _crc_register_scalar(register, data[body:].tobytes())


def crc32c(data: bytes | bytearray | memoryview | np.ndarray, value: int = 0) -> int:
    """CRC32C of ``data``, continuing from a previous (unmasked) ``value``."""
    if isinstance(data, np.ndarray):
        array = np.ascontiguousarray(data).view(np.uint8).ravel()
    else:
        array = np.frombuffer(data, dtype=np.uint8)
    register = (value ^ 0xFFFFFFFF) & 0xFFFFFFFF
    if len(array) < _SCALAR_CRC_LIMIT:
        register = _crc_register_scalar(register, array.tobytes())
    else:
        register = _crc_register_lanes(register, array)
    return register ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Protobuf wire format (only what the bundle protos use)


def _read_varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
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


def _parse_message(data: bytes, where: str) -> dict[int, list]:
    """Field number -> list of values (ints for varint/fixed, bytes for length-delimited)."""
    fields: dict[int, list] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos, where)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos, where)
        elif wire_type == 1:
            if pos + 8 > len(data):
                raise ValueError(f"{where}: truncated fixed64 field {number}")
            (value,) = struct.unpack_from("<Q", data, pos)
            pos += 8
        elif wire_type == 2:
            length, pos = _read_varint(data, pos, where)
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
class _Entry:
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
        return _DTYPES.get(self.dtype_enum, (f"dtype_enum_{self.dtype_enum}", None))[0]


def _parse_shape(data: bytes, where: str) -> tuple[int, ...]:
    fields = _parse_message(data, where)
    if _last(fields, 3):
        raise ValueError(f"{where}: tensor has unknown rank")
    dims = []
    for dim in fields.get(2, []):
        size = _to_int64(_last(_parse_message(dim, where), 1))
        if size < 0:
            raise ValueError(f"{where}: tensor has an unknown dimension ({size})")
        dims.append(size)
    return tuple(dims)


def _parse_entry(data: bytes, where: str) -> _Entry:
    fields = _parse_message(data, where)
    return _Entry(
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
    offset, pos = _read_varint(data, pos, where)
    size, pos = _read_varint(data, pos, where)
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
    if _unmask_crc(stored) != actual:
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
        shared, pos = _read_varint(block, pos, where)
        unshared, pos = _read_varint(block, pos, where)
        value_length, pos = _read_varint(block, pos, where)
        if shared > len(key) or pos + unshared + value_length > entries_end:
            raise ValueError(f"{where}: corrupted block entry at offset {pos}")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_length]
        pos += value_length


def _read_index(index_path: Path) -> tuple[dict[int, list], dict[str, _Entry]]:
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
    entries: dict[str, _Entry] = {}
    for _last_key, handle_bytes in _iter_block(_read_block(table, index_handle, where), where):
        data_handle, _ = _read_block_handle(handle_bytes, 0, where)
        for key, value in _iter_block(_read_block(table, data_handle, where), where):
            if key == _HEADER_KEY:
                header = _parse_message(value, f"{where} (bundle header)")
                continue
            name = key.decode("utf-8", errors="replace")
            entries[name] = _parse_entry(value, f"{where} (entry {name!r})")
    if header is None:
        raise ValueError(f"{where}: no bundle header entry; not a TF2 checkpoint index")
    if _last(header, 2) != 0:
        raise ValueError(f"{where}: big-endian checkpoints are not supported")
    return header, entries


# --------------------------------------------------------------------------------------------------
# Public API


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
    _header, entries = _read_index(Path(f"{prefix}.index"))
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
    header, entries = _read_index(index_path)
    num_shards = _last(header, 1, 1)
    shards: dict[int, BinaryIO] = {}
    tensors: dict[str, np.ndarray] = {}
    try:
        for name, entry in sorted(entries.items()):
            if entry.dtype_enum == _DT_STRING and not include_strings:
                continue
            where = f"{index_path} (tensor {name!r})"
            if entry.sliced:
                raise ValueError(f"{where}: partitioned (sliced) variables are not supported")
            if entry.dtype_enum not in _DTYPES:
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
            if verify_checksums and entry.masked_crc32c is not None and entry.dtype_enum != _DT_STRING:
                if crc32c(raw) != _unmask_crc(entry.masked_crc32c):
                    raise ValueError(f"{handle.name} (tensor {name!r}): data corrupted (CRC32C mismatch)")
            tensors[name] = _decode(raw, entry, where)
    finally:
        for handle in shards.values():
            handle.close()
    return tensors


def _read_bytes(handle: BinaryIO, entry: _Entry, name: str) -> bytearray:
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


def _decode(raw: bytearray, entry: _Entry, where: str) -> np.ndarray:
    count = int(np.prod(entry.shape, dtype=np.int64))
    if entry.dtype_enum == _DT_STRING:
        return _decode_strings(bytes(raw), count, entry.shape, where)
    _name, dtype = _DTYPES[entry.dtype_enum]
    if count * dtype.itemsize != len(raw):
        raise ValueError(
            f"{where}: size mismatch: {entry.dtype_name}{list(entry.shape)} needs "
            f"{count * dtype.itemsize} bytes, the entry records {len(raw)}"
        )
    array = np.frombuffer(raw, dtype=dtype).reshape(entry.shape)
    if entry.dtype_enum == _DT_BFLOAT16:
        # bfloat16 is the top half of a float32
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _decode_strings(raw: bytes, count: int, shape: tuple[int, ...], where: str) -> np.ndarray:
    # layout: varint64 length per element, a 4-byte masked CRC of the lengths, then the bytes
    lengths, pos = [], 0
    for _ in range(count):
        length, pos = _read_varint(raw, pos, where)
        lengths.append(length)
    pos += 4
    values = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        if pos + length > len(raw):
            raise ValueError(f"{where}: string tensor data is truncated")
        values[i] = raw[pos : pos + length]
        pos += length
    return values.reshape(shape)
