"""Which parity variants exist, and what each is made with.

This module owns the variant names (``{backbone}_{base|stream}`` and ``test_stream_pe``; stream
a3-a5 use positional encoding as the official configs do), the committed CI set with its input
shapes and class count, the defaults for the others, and the per-variant seeds.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

BACKBONES = ("a0", "a1", "a2", "a3", "a4", "a5", "t0", "test")
OFFICIAL_BACKBONES = ("a0", "a1", "a2", "a3", "a4", "a5")
PE_BACKBONES = ("a3", "a4", "a5")  # the official stream configs use positional encoding only here

# The committed CI set: tiny inputs with odd and even sizes so both TF SAME padding cases occur.
CI_VARIANTS = {
    "test_base": (2, 4, 33, 33),
    "test_stream": (2, 5, 32, 32),
    "test_stream_pe": (2, 5, 33, 33),
    "a0_base": (2, 3, 64, 64),
    "a0_stream": (2, 4, 65, 65),
}
CI_NUM_CLASSES = 10
ALL_VARIANTS = tuple(f"{b}_{m}" for b in OFFICIAL_BACKBONES for m in ("base", "stream"))
DEFAULT_INPUT = (2, 3, 64, 64)
ALL_NUM_CLASSES = 600
DEFAULT_SEED = 20240611


@dataclass(frozen=True)
class Variant:
    name: str
    backbone: str
    mode: str  # "base" or "stream"
    use_positional_encoding: bool

    @property
    def is_stream(self) -> bool:
        return self.mode == "stream"


def parse_variant(name: str) -> Variant:
    """``{backbone}_{mode}`` or ``test_stream_pe``; stream a3-a5 use PE as the official configs do."""
    parts = name.split("_")
    if len(parts) == 3 and parts[1:] == ["stream", "pe"]:
        backbone, mode, pe = parts[0], "stream", True
    elif len(parts) == 2:
        backbone, mode = parts
        pe = mode == "stream" and backbone in PE_BACKBONES
    else:
        raise ValueError(f"bad variant name {name!r}: expected '<backbone>_<base|stream>[_pe]'")
    if backbone not in BACKBONES or mode not in ("base", "stream"):
        raise ValueError(f"bad variant name {name!r}: backbones {BACKBONES}, modes base/stream")
    return Variant(name, backbone, mode, pe)


def variant_seed(base_seed: int, name: str) -> int:
    # crc32 of the name (not hash()) so seeds survive interpreter restarts
    return (base_seed * 7919 + zlib.crc32(name.encode())) % (2**31)
