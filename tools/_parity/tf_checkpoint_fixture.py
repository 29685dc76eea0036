"""A multi-dtype checkpoint for testing ``model/io/tf_checkpoint.py``, and what TF reads back from it.

This module owns ``tests/fixtures/tf_checkpoint/``: one variable per supported dtype (a long one
for the lane-parallel CRC path, bfloat16 included), saved by ``tf.train.Checkpoint``, with
``expected.npz``/``expected.json`` holding what ``tf.train.load_checkpoint`` returned for it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf


def make_tf_checkpoint_fixture(out_dir: Path, seed: int) -> None:
    """A tiny object checkpoint with one variable per supported dtype, plus what TF reads back."""
    rng = np.random.default_rng(seed)
    values = {
        "scalar_f32": np.float32(rng.normal()),
        "kernel_f32": rng.normal(size=(2, 3, 4, 5)).astype(np.float32),
        "long_f32": rng.normal(size=(5000,)).astype(np.float32),  # big enough for the lane CRC path
        "matrix_f64": rng.normal(size=(3, 7)),
        "half_f16": rng.normal(size=(4, 6)).astype(np.float16),
        "ints_i32": rng.integers(-(2**31), 2**31 - 1, size=(11,), dtype=np.int32),
        "ints_i64": rng.integers(-(2**62), 2**62, size=(2, 9), dtype=np.int64),
        "bytes_u8": rng.integers(0, 256, size=(3, 3, 3), dtype=np.uint8),
        "mask_bool": rng.uniform(size=(17,)) > 0.5,
        "scalar_i64": np.int64(-1234567890123),
    }
    variables = {name: tf.Variable(value, name=name) for name, value in values.items()}
    variables["brain_bf16"] = tf.Variable(tf.cast(rng.normal(size=(8,)).astype(np.float32), tf.bfloat16))

    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "ckpt").mkdir(parents=True)
    tf.train.Checkpoint(**variables).save(str(out_dir / "ckpt" / "ckpt"))

    prefix = tf.train.latest_checkpoint(str(out_dir / "ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    expected, listing, strings = {}, {}, {}
    for key in sorted(shapes):
        listing[key] = [dtypes[key].name, list(shapes[key])]
        if dtypes[key] == tf.string:
            # npz can't hold bytes objects without pickle; a digest is enough to compare
            data = reader.get_tensor(key)
            data = data if isinstance(data, bytes) else data.item()
            strings[key] = {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            continue
        tensor = reader.get_tensor(key)
        if dtypes[key] == tf.bfloat16:
            tensor = np.asarray(tensor, dtype=np.float32)  # numpy has no bfloat16; the reader widens it
        expected[key] = tensor
    np.savez(out_dir / "expected.npz", **expected)
    (out_dir / "expected.json").write_text(
        json.dumps(
            {"tensorflow": tf.__version__, "seed": seed, "variables": listing, "strings": strings}, indent=1
        )
        + "\n"
    )
    print(f"wrote {out_dir}: {len(expected)} tensors, {len(listing)} keys")
