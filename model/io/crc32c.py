"""CRC32C (Castagnoli), the checksum LevelDB tables and TensorFlow tensor bundles store.

This module owns computing it fast enough for checkpoint-sized data with numpy alone (a byte loop
for short inputs, lane-parallel numpy above :data:`_SCALAR_CRC_LIMIT` bytes) and undoing the
*mask* LevelDB applies to a CRC before storing it next to the data it covers.
"""

from __future__ import annotations

import numpy as np

__all__ = ["crc32c", "unmask_crc"]


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


def unmask_crc(masked: int) -> int:
    """The CRC32C that LevelDB stored as ``masked`` (rotated right by 15, plus a constant)."""
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF
