"""The TF-free checkpoint reader against what TensorFlow itself read back from the same files.

CI has no TensorFlow: ``tests/fixtures/tf_checkpoint/`` holds a tiny checkpoint written by TF and
the values ``tf.train.load_checkpoint(...).get_tensor`` returned for it (see
``tools/make_parity_fixtures.py --tf-checkpoint-fixture``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from model.io.tf_checkpoint import crc32c, list_tf_variables, read_tf_checkpoint, resolve_checkpoint_prefix

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
TINY = FIXTURES / "tf_checkpoint"
PARITY = FIXTURES / "parity"
VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture()
def tiny_copy(tmp_path: Path) -> Path:
    """A writable copy of the tiny checkpoint directory."""
    target = tmp_path / "ckpt"
    shutil.copytree(TINY / "ckpt", target)
    return target


def test_crc32c_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    data = np.random.default_rng(0).integers(0, 256, size=100_003, dtype=np.uint8).tobytes()
    # the lane-parallel path (long input) must agree with chaining short scalar pieces
    chained = 0
    for start in range(0, len(data), 1000):
        chained = crc32c(data[start : start + 1000], chained)
    assert crc32c(data) == chained


def test_values_equal_tensorflow_readback():
    tensors = read_tf_checkpoint(TINY / "ckpt")
    expected = np.load(TINY / "expected.npz")
    assert sorted(tensors) == sorted(expected.files)
    for name in expected.files:
        want, got = expected[name], tensors[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert np.array_equal(got, want), name
    # dtypes the fixture was made to cover
    dtypes = {
        tensors[f"{name}{VALUE}"].dtype.name for name in ("half_f16", "ints_i32", "ints_i64", "mask_bool")
    }
    assert dtypes == {"float16", "int32", "int64", "bool"}
    assert tensors[f"scalar_f32{VALUE}"].shape == ()
    assert tensors[f"kernel_f32{VALUE}"].ndim == 4
    assert tensors[f"brain_bf16{VALUE}"].dtype == np.float32  # bfloat16 widened


def test_listing_equals_tensorflow_listing():
    expected = json.loads((TINY / "expected.json").read_text())["variables"]
    listing = list_tf_variables(TINY / "ckpt")
    assert listing == {name: (dtype, tuple(shape)) for name, (dtype, shape) in expected.items()}


def test_string_tensors_only_on_request():
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in read_tf_checkpoint(TINY / "ckpt")
    graph = read_tf_checkpoint(TINY / "ckpt", include_strings=True)["_CHECKPOINTABLE_OBJECT_GRAPH"]
    want = json.loads((TINY / "expected.json").read_text())["strings"]["_CHECKPOINTABLE_OBJECT_GRAPH"]
    data = graph.item()
    assert len(data) == want["length"]
    assert hashlib.sha256(data).hexdigest() == want["sha256"]


def test_prefix_resolution(tiny_copy: Path):
    prefix = tiny_copy / "ckpt-1"
    assert resolve_checkpoint_prefix(tiny_copy) == prefix
    assert resolve_checkpoint_prefix(prefix) == prefix
    assert resolve_checkpoint_prefix(f"{prefix}.index") == prefix
    assert read_tf_checkpoint(prefix).keys() == read_tf_checkpoint(tiny_copy).keys()

    # a 'checkpoint' file written on another machine records an absolute path that doesn't exist here
    (tiny_copy / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run/ckpt-1"\n')
    assert resolve_checkpoint_prefix(tiny_copy) == prefix

    # without a 'checkpoint' file the highest step wins (10 > 2, not by string order)
    (tiny_copy / "checkpoint").unlink()
    for step in (2, 10):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copy(f"{prefix}{suffix}", tiny_copy / f"ckpt-{step}{suffix}")
    assert resolve_checkpoint_prefix(tiny_copy) == tiny_copy / "ckpt-10"


def test_missing_checkpoint_is_a_value_error(tmp_path: Path):
    with pytest.raises(ValueError, match="no checkpoint here"):
        read_tf_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="not a checkpoint"):
        list_tf_variables(tmp_path / "nope" / "ckpt-1")


# --------------------------------------------------------------------------------------------------
# The parity fixtures: official MoViNet checkpoints written by tools/make_parity_fixtures.py


def test_parity_stream_checkpoint_layout():
    listing = list_tf_variables(PARITY / "test_stream" / "ckpt")
    backbone, head = "model/layer_with_weights-0", "model/layer_with_weights-1"
    expected = {
        # stem: a (2+1)D model wraps every conv in MobileConv2D, so kernels sit one level deeper
        f"{backbone}/layer_with_weights-0/_stem/_conv/_conv/kernel": [3, 3, 3, 8],
        f"{backbone}/layer_with_weights-0/_stem/_batch_norm/moving_variance": [8],
        # block0_layer0 (8 -> 16 -> 8, 1x5x5, stride 2): spatial-only depthwise conv, skip projection
        f"{backbone}/layer_with_weights-1/_expansion/_conv/_conv/kernel": [1, 1, 8, 16],
        f"{backbone}/layer_with_weights-1/_feature/_conv/_conv/depthwise_kernel": [5, 5, 16, 1],
        f"{backbone}/layer_with_weights-1/_attention/_se_reduce/_conv/_conv/kernel": [1, 1, 32, 8],
        f"{backbone}/layer_with_weights-1/_attention/_se_expand/_conv/_conv/bias": [16],
        f"{backbone}/layer_with_weights-1/_projection/_conv/_conv/kernel": [1, 1, 16, 8],
        f"{backbone}/layer_with_weights-1/_skip/_projection/_conv/_conv/kernel": [1, 1, 8, 8],
        f"{backbone}/layer_with_weights-1/_mobile_bottleneck/_rezero/scale": [],
        # block1_layer0 (3x3x3): the temporal half has its own kernel and BN
        f"{backbone}/layer_with_weights-2/_feature/_conv/_conv/depthwise_kernel": [3, 3, 40, 1],
        f"{backbone}/layer_with_weights-2/_feature/_conv_temporal/_conv/depthwise_kernel": [3, 1, 40, 1],
        f"{backbone}/layer_with_weights-2/_feature/_batch_norm_temporal/gamma": [40],
        # head and classifier
        f"{backbone}/layer_with_weights-7/_project/_conv/_conv/kernel": [1, 1, 32, 48],
        f"{head}/_head/_conv/_conv/kernel": [1, 1, 48, 64],
        f"{head}/_head/_conv/_conv/bias": [64],
        f"{head}/_classifier/_conv/_conv/kernel": [1, 1, 64, 10],
        f"{head}/_classifier/_conv/_conv/bias": [10],
    }
    for name, shape in expected.items():
        assert listing[name + VALUE] == ("float32", tuple(shape)), name
    # no positional encoding in this variant, and every variable is a plain VARIABLE_VALUE
    assert not any("_pos_encoding" in name for name in listing)
    variables = [name for name in listing if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert all(name.endswith(VALUE) for name in variables)


@pytest.mark.parametrize("variant", ["test_base", "test_stream", "test_stream_pe", "a0_base", "a0_stream"])
def test_parity_checkpoints_read_completely(variant: str):
    ckpt = PARITY / variant / "ckpt"
    listing = list_tf_variables(ckpt)
    tensors = read_tf_checkpoint(ckpt)  # checksums verified
    assert set(tensors) == set(listing) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    for name, array in tensors.items():
        assert (array.dtype.name, array.shape) == listing[name], name
        assert np.all(np.isfinite(array)), name
    meta = json.loads((PARITY / variant / "meta.json").read_text())
    params = sum(a.size for n, a in tensors.items() if not n.startswith("save_counter"))
    assert params == meta["trainable_params"] + meta["non_trainable_params"]


# --------------------------------------------------------------------------------------------------
# Damaged files


def _first_data_block(index: bytes) -> tuple[int, int]:
    """(offset, size) of the tiny checkpoint's single data block: it starts the file and ends
    five trailer bytes before the meta-index block the footer points at."""

    def varint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = index[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7

    meta_offset, _ = varint(len(index) - 48)
    size = meta_offset - 5
    stored = struct.unpack_from("<I", index, size + 1)[0]
    rotated = (stored - 0xA282EAD8) & 0xFFFFFFFF
    assert ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF == crc32c(index[: size + 1]), "not one block"
    return 0, size


def _reseal(index: bytearray, offset: int, size: int) -> None:
    """Recompute a block's masked CRC so that only the deliberate change is seen."""
    crc = crc32c(bytes(index[offset : offset + size + 1]))
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    struct.pack_into("<I", index, offset + size + 1, masked)


def test_truncated_index(tiny_copy: Path):
    index = tiny_copy / "ckpt-1.index"
    data = index.read_bytes()
    index.write_bytes(data[:-1])
    with pytest.raises(ValueError, match=r"ckpt-1\.index.*bad magic"):
        read_tf_checkpoint(tiny_copy)
    index.write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"ckpt-1\.index.*too short"):
        list_tf_variables(tiny_copy)


def test_corrupted_index_block(tiny_copy: Path):
    index = tiny_copy / "ckpt-1.index"
    data = bytearray(index.read_bytes())
    data[7] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"ckpt-1\.index.*CRC32C mismatch"):
        read_tf_checkpoint(tiny_copy)


def test_snappy_block_is_refused(tiny_copy: Path):
    index = tiny_copy / "ckpt-1.index"
    data = bytearray(index.read_bytes())
    offset, size = _first_data_block(bytes(data))
    data[offset + size] = 1  # compression type: snappy
    _reseal(data, offset, size)
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"ckpt-1\.index.*snappy"):
        list_tf_variables(tiny_copy)


def test_entry_size_mismatch(tiny_copy: Path):
    index = tiny_copy / "ckpt-1.index"
    data = bytearray(index.read_bytes())
    offset, size = _first_data_block(bytes(data))
    # keys are prefix-compressed, so search for the unshared tail; BundleEntryProto field 5 (size)
    # of a float32 scalar is the varint 4, tag 0x28
    key_end = data.index(b"scalar_f32/.ATTRIBUTES/VARIABLE_VALUE"[1:]) + len("scalar_f32" + VALUE) - 1
    size_at = data.index(b"\x28\x04", key_end)
    data[size_at + 1] = 2
    _reseal(data, offset, size)
    index.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"scalar_f32.*size mismatch"):
        read_tf_checkpoint(tiny_copy, verify_checksums=False)
    with pytest.raises(ValueError, match=r"scalar_f32.*CRC32C mismatch"):
        read_tf_checkpoint(tiny_copy)


def test_corrupted_data(tiny_copy: Path):
    shard = tiny_copy / "ckpt-1.data-00000-of-00001"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"data-00000-of-00001.*CRC32C mismatch"):
        read_tf_checkpoint(tiny_copy)
    read_tf_checkpoint(tiny_copy, verify_checksums=False)  # the damage is only detectable by CRC


def test_truncated_data(tiny_copy: Path):
    shard = tiny_copy / "ckpt-1.data-00000-of-00001"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"data-00000-of-00001.*truncated"):
        read_tf_checkpoint(tiny_copy)


def test_missing_shard(tiny_copy: Path):
    (tiny_copy / "ckpt-1.data-00000-of-00001").unlink()
    assert len(list_tf_variables(tiny_copy)) > 1  # the index alone still lists
    with pytest.raises(ValueError, match=r"data-00000-of-00001.*missing"):
        read_tf_checkpoint(tiny_copy)
