"""Make the TensorFlow parity fixtures: official MoViNet models, their checkpoints, inputs and outputs.

This script owns the *oracle* side of the parity tests. It runs only in a separate TensorFlow
environment (tensorflow-cpu 2.20 + tf-models-official 2.20; recipe in
``tests/fixtures/parity/README.md``) and is never imported by the project. It builds the official
Model Garden networks (``official.projects.movinet.modeling.movinet.Movinet`` wrapped in
``movinet_model.MovinetClassifier``) in the released *base* or *stream* configuration, gives every
variable seeded, non-trivial values, runs them, and writes per variant::

    <out>/<variant>/ckpt/{checkpoint, ckpt-1.index, ckpt-1.data-00000-of-00001}
    <out>/<variant>/io.npz      input [B,T,H,W,3] in [0,1]; base: logits;
                                stream: logits_clip, logits_steps [T,B,N], state/<name> (TF layout)
    <out>/<variant>/meta.json   how it was made
    <out>/param_counts.json     parameter counts and stream state shapes of every backbone

It can also write the small multi-dtype checkpoint used to test the TF-free checkpoint reader
(``--tf-checkpoint-fixture DIR``).

Usage (from the repository root)::

    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --out tests/fixtures/parity
    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --out .cache/parity-all --all
    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --tf-checkpoint-fixture tests/fixtures/tf_checkpoint
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

tf.get_logger().setLevel("ERROR")  # the official Conv3D re-traces per shape and warns each time

REPO_ROOT = Path(__file__).resolve().parents[1]
SPECS_PATH = REPO_ROOT / "model" / "specs.py"

BACKBONES = ("a0", "a1", "a2", "a3", "a4", "a5", "t0", "test")
OFFICIAL_BACKBONES = ("a0", "a1", "a2", "a3", "a4", "a5")
PE_BACKBONES = ("a3", "a4", "a5")  # the official stream configs use positional encoding only here

# Parameter counts of MovinetClassifier(num_classes=600) measured on the official code; a mismatch
# means the oracle environment is not the one the references were made with.
EXPECTED_TRAINABLE = {"a0_base": 3_111_799, "a0_stream": 3_748_031, "a5_stream": 31_495_934}

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
STATE_SHAPE_INPUT = (1, 8, 172, 172, 3)
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


# --------------------------------------------------------------------------------------------------
# Specs: the official BLOCK_SPECS plus our tiny "test" spec, read from model/specs.py


def load_project_specs():
    """Load ``model/specs.py`` by path: importing the ``model`` package would pull in PyTorch."""
    spec = importlib.util.spec_from_file_location("_project_specs", SPECS_PATH)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {SPECS_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


def to_official_spec(backbone_spec, movinet):
    """Translate one of our ``BackboneSpec`` objects into the official tuple of block specs."""
    blocks = [
        movinet.StemSpec(
            filters=backbone_spec.stem.filters,
            kernel_size=tuple(backbone_spec.stem.kernel_size),
            strides=tuple(backbone_spec.stem.strides),
        )
    ]
    for stage in backbone_spec.stages:
        blocks.append(
            movinet.MovinetBlockSpec(
                base_filters=stage.base_filters,
                expand_filters=tuple(stage.expand_filters),
                kernel_sizes=tuple(tuple(k) for k in stage.kernel_sizes),
                strides=tuple(tuple(s) for s in stage.strides),
            )
        )
    blocks.append(
        movinet.HeadSpec(
            project_filters=backbone_spec.head.project_filters,
            head_filters=backbone_spec.head.head_filters,
        )
    )
    return tuple(blocks)


def _normalise(blocks) -> list:
    out = []
    for block in blocks:
        fields = {k: v for k, v in vars(block).items()}
        for key, value in fields.items():
            if isinstance(value, (list, tuple)):
                fields[key] = tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
        out.append((type(block).__name__, tuple(sorted(fields.items()))))
    return out


def register_specs(movinet) -> dict[str, bool]:
    """Register ``test`` into the official registry; report which of our specs equal the official."""
    specs = load_project_specs()
    movinet.BLOCK_SPECS["test"] = to_official_spec(specs.BLOCK_SPECS["test"], movinet)
    matches = {}
    for name in OFFICIAL_BACKBONES + ("t0",):
        ours = _normalise(to_official_spec(specs.BLOCK_SPECS[name], movinet))
        matches[name] = ours == _normalise(movinet.BLOCK_SPECS[name])
    return matches


# --------------------------------------------------------------------------------------------------
# Model construction


def build_model(variant: Variant, num_classes: int):
    from official.projects.movinet.modeling import movinet, movinet_model

    if variant.is_stream:
        backbone = movinet.Movinet(
            model_id=variant.backbone,
            causal=True,
            conv_type="2plus1d",
            se_type="2plus3d",
            activation="hard_swish",
            gating_activation="hard_sigmoid",
            use_positional_encoding=variant.use_positional_encoding,
            use_external_states=True,
            norm_epsilon=1e-3,
        )
    else:
        backbone = movinet.Movinet(
            model_id=variant.backbone,
            causal=False,
            conv_type="3d",
            se_type="3d",
            activation="swish",
            gating_activation="sigmoid",
            norm_epsilon=1e-3,
        )
    return movinet_model.MovinetClassifier(backbone, num_classes=num_classes, output_states=variant.is_stream)


def count_params(model) -> tuple[int, int]:
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    non_trainable = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return trainable, non_trainable


# --------------------------------------------------------------------------------------------------
# Weights: seeded random values that exercise every parameter


def _leaf_name(variable) -> str:
    return variable.name.split("/")[-1].split(":")[0]


def _fan_in(variable) -> int:
    shape = variable.shape.as_list()
    if _leaf_name(variable) == "depthwise_kernel":  # [kh, kw, C, 1]: one kh*kw filter per channel
        return shape[0] * shape[1]
    return int(np.prod(shape[:-1]))  # [.., Cin/groups, Cout]


def randomise_weights(model, rng: np.random.Generator) -> None:
    """Give every variable a non-trivial value; BN moving statistics are calibrated afterwards."""
    assigned = 0
    for variable in model.weights:
        leaf, shape = _leaf_name(variable), variable.shape.as_list()
        if leaf in ("kernel", "depthwise_kernel"):
            # LeCun-normal keeps SE pre-activations O(1) (no BN follows them). The classifier head
            # sees a clip-averaged feature with a small spread, so it gets a larger gain to put
            # its swish in the non-linear range and the logits near O(1).
            gain = 2.5 if variable.name.startswith("classifier_head/") else 1.0
            value = rng.normal(0.0, gain / np.sqrt(_fan_in(variable)), size=shape)
        elif leaf == "bias":
            value = rng.normal(0.0, 0.1, size=shape)
        elif leaf == "gamma":
            value = rng.uniform(0.5, 1.5, size=shape)
        elif leaf == "beta":
            value = rng.normal(0.0, 0.2, size=shape)
        elif leaf == "moving_mean":
            value = np.zeros(shape)
        elif leaf == "moving_variance":
            value = np.ones(shape)
        elif leaf == "scale":
            # ReZero and positional-encoding scales start at 0 in TF; 0 would hide a whole branch
            value = rng.uniform(0.3, 1.0, size=shape)
        else:
            raise ValueError(f"don't know how to initialise variable {variable.name}")
        variable.assign(np.asarray(value, dtype=variable.dtype.as_numpy_dtype))
        assigned += 1
    if assigned != len(model.weights):
        raise ValueError("not every variable was assigned")


def _batch_norm_layers(model) -> list:
    # _flatten_layers walks nested layers once each (MobileConv2D shares its ConvBlock's BN)
    layers = model._flatten_layers(include_self=False, recursive=True)
    return [layer for layer in layers if isinstance(layer, tf_keras.layers.BatchNormalization)]


def calibrate_batch_norm(model, inputs: dict, rng: np.random.Generator) -> int:
    """Give BN layers random moving statistics without letting activations drift with depth.

    Random moving statistics alone make a deep network's activations grow layer after layer. So each
    BN first measures what it actually sees on the calibration clip (one training-mode pass with
    momentum 0 copies the batch mean and variance into the moving statistics), then gets random
    moving statistics around those, and gamma/beta are rewritten so that inference still computes
    ``gamma0 * (x - batch_mean) / sqrt(batch_var + eps) + beta0`` with the random gamma0/beta0.
    The saved moving statistics are far from the batch statistics and gamma/beta are not gamma0/beta0,
    so a port that normalised with batch statistics (training mode) would not pass by accident.
    """
    layers = _batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
        # from 0, "moving - (moving - batch) * 1" is exactly the batch value
        layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
        layer.moving_variance.assign(tf.zeros_like(layer.moving_variance))
    model(inputs, training=True)
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
        eps = layer.epsilon
        batch_mean = layer.moving_mean.numpy().astype(np.float64)
        # a dead channel has ~0 variance; normalising it by sqrt(eps) would amplify rounding noise
        batch_var = np.maximum(layer.moving_variance.numpy().astype(np.float64), 1e-2)
        batch_std = np.sqrt(batch_var + eps)
        gamma0 = layer.gamma.numpy().astype(np.float64)
        beta0 = layer.beta.numpy().astype(np.float64)

        moving_mean = batch_mean + 0.5 * batch_std * rng.normal(size=batch_mean.shape)
        moving_var = batch_var * rng.uniform(0.5, 2.0, size=batch_var.shape)
        gamma = gamma0 * np.sqrt(moving_var + eps) / batch_std
        beta = beta0 + gamma0 * (moving_mean - batch_mean) / batch_std
        for variable, value in (
            (layer.moving_mean, moving_mean),
            (layer.moving_variance, moving_var),
            (layer.gamma, gamma),
            (layer.beta, beta),
        ):
            variable.assign(value.astype(np.float32))
    return len(layers)


# --------------------------------------------------------------------------------------------------
# Running the oracle


def jit_call(model):
    # The official Conv3D already compiles itself with XLA; compiling the whole call as the TF-Hub
    # exports and the MoViNet tutorial do avoids the known CPU tf.nn.conv3d issue everywhere.
    return tf.function(lambda inputs: model(inputs, training=False), jit_compile=True)


def init_states(model, shape) -> dict:
    return {name: value for name, value in model.init_states(tf.constant(shape, tf.int32)).items()}


def run_base(model, video: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    logits = jit_call(model)({"image": tf.constant(video)})
    eager = model({"image": tf.constant(video)}, training=False)
    return {"logits": logits.numpy()}, {"max_abs_jit_vs_eager": _max_abs(logits, eager)}


def run_stream(model, video: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    call = jit_call(model)
    states = init_states(model, video.shape)
    logits_clip, final_states = call({**states, "image": tf.constant(video)})
    eager_logits, _ = model({**states, "image": tf.constant(video)}, training=False)

    states = init_states(model, video.shape)
    steps = []
    for t in range(video.shape[1]):
        logits, states = call({**states, "image": tf.constant(video[:, t : t + 1])})
        steps.append(logits.numpy())
    logits_steps = np.stack(steps)  # (T, B, classes)

    arrays = {"logits_clip": logits_clip.numpy(), "logits_steps": logits_steps}
    for name in sorted(final_states):
        arrays[f"state/{name}"] = final_states[name].numpy()
    checks = {
        "max_abs_jit_vs_eager": _max_abs(logits_clip, eager_logits),
        "max_abs_clip_vs_last_step": float(np.max(np.abs(arrays["logits_clip"] - logits_steps[-1]))),
        "max_abs_state_after_steps_vs_clip": max(
            float(np.max(np.abs(np.asarray(states[n], np.float64) - np.asarray(final_states[n], np.float64))))
            for n in final_states
        ),
    }
    return arrays, checks


def check_restore(variant: Variant, ckpt_dir: Path, num_classes: int, video, logits) -> float:
    """Restore the saved checkpoint into a fresh model the README way and rerun it."""
    fresh = build_model(variant, num_classes)
    status = tf.train.Checkpoint(model=fresh).restore(tf.train.latest_checkpoint(str(ckpt_dir)))
    status.assert_consumed()  # every saved value found a home, and vice versa
    inputs = {"image": tf.constant(video)}
    if variant.is_stream:
        inputs.update(init_states(fresh, video.shape))
    restored = jit_call(fresh)(inputs)
    if variant.is_stream:
        restored = restored[0]
    difference = _max_abs(restored, logits)
    if difference > 1e-5:
        raise ValueError(f"{variant.name}: restored checkpoint gives different logits ({difference})")
    return difference


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def make_variant(variant: Variant, out_dir: Path, num_classes: int, input_shape, seed: int) -> dict:
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    tf.random.set_seed(seed)  # only affects build-time initialisers, all overwritten below

    model = build_model(variant, num_classes)
    randomise_weights(model, rng)

    batch, frames, height, width = input_shape
    video = rng.uniform(0.0, 1.0, size=(batch, frames, height, width, 3)).astype(np.float32)
    # Calibrate on the stored clip itself: at fixture sizes the deep stages are 2x2 pixels, and
    # statistics from a different clip of a few dozen samples per channel do not carry over;
    # a5 logits then reach ~1e3 and the XLA and eager results disagree by whole units.
    calib_inputs = {"image": tf.constant(video)}
    if variant.is_stream:
        calib_inputs.update(init_states(model, video.shape))
    num_bn = calibrate_batch_norm(model, calib_inputs, rng)

    if variant.is_stream:
        arrays, checks = run_stream(model, video)
        logits = arrays["logits_clip"]
    else:
        arrays, checks = run_base(model, video)
        logits = arrays["logits"]
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"{variant.name}: non-finite logits; the random weights are unusable")
    checks["logits_std"] = float(np.std(logits))
    checks["logits_max_abs"] = float(np.max(np.abs(logits)))

    variant_dir = out_dir / variant.name
    if variant_dir.exists():
        shutil.rmtree(variant_dir)
    (variant_dir / "ckpt").mkdir(parents=True)
    # exactly how the released checkpoints were written (README: Checkpoint(model=model))
    tf.train.Checkpoint(model=model).save(str(variant_dir / "ckpt" / "ckpt"))
    np.savez(variant_dir / "io.npz", input=video, **arrays)
    checks["max_abs_restored_vs_saved"] = check_restore(
        variant, variant_dir / "ckpt", num_classes, video, logits
    )

    trainable, non_trainable = count_params(model)
    meta = {
        "backbone": variant.backbone,
        "mode": variant.mode,
        "num_classes": num_classes,
        "use_positional_encoding": variant.use_positional_encoding,
        "hard_sigmoid": "model_garden",
        "input_shape": list(video.shape),
        "tensorflow": tf.__version__,
        "tf_models_official": _tf_models_version(),
        "seed": seed,
        "config": _config_dict(variant),
        "jit_compile": True,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "batch_norm_layers_calibrated": num_bn,
        "checks": checks,
    }
    (variant_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    meta["seconds"] = round(time.monotonic() - started, 1)
    return meta


def _config_dict(variant: Variant) -> dict:
    if variant.is_stream:
        return {
            "causal": True,
            "conv_type": "2plus1d",
            "se_type": "2plus3d",
            "activation": "hard_swish",
            "gating_activation": "hard_sigmoid",
            "use_external_states": True,
            "use_positional_encoding": variant.use_positional_encoding,
            "classifier_activation": "swish",
            "norm_epsilon": 1e-3,
        }
    return {
        "causal": False,
        "conv_type": "3d",
        "se_type": "3d",
        "activation": "swish",
        "gating_activation": "sigmoid",
        "classifier_activation": "swish",
        "norm_epsilon": 1e-3,
    }


def _tf_models_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tf-models-official")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------------
# Parameter counts (build only)


def make_param_counts(out_dir: Path, spec_matches: dict[str, bool]) -> dict:
    entries = {}
    names = [f"{b}_{m}" for b in BACKBONES for m in ("base", "stream")] + ["test_stream_pe"]
    for name in names:
        variant = parse_variant(name)
        model = build_model(variant, ALL_NUM_CLASSES)
        trainable, non_trainable = count_params(model)
        entry = {
            "trainable": trainable,
            "non_trainable": non_trainable,
            "use_positional_encoding": variant.use_positional_encoding,
        }
        if variant.is_stream:
            states = init_states(model, STATE_SHAPE_INPUT)
            entry["states"] = {
                key: [list(value.shape.as_list()), value.dtype.name] for key, value in sorted(states.items())
            }
        entries[name] = entry
        print(f"  param counts {name}: trainable={trainable:,} non_trainable={non_trainable:,}", flush=True)
        tf_keras.backend.clear_session()

    failures = [
        f"{name}: expected {want:,}, got {entries[name]['trainable']:,}"
        for name, want in EXPECTED_TRAINABLE.items()
        if entries[name]["trainable"] != want
    ]
    result = {
        "num_classes": ALL_NUM_CLASSES,
        "state_input_shape": list(STATE_SHAPE_INPUT),
        "tensorflow": tf.__version__,
        "tf_models_official": _tf_models_version(),
        "project_specs_match_official": spec_matches,
        "models": entries,
    }
    (out_dir / "param_counts.json").write_text(json.dumps(result, indent=1) + "\n")
    if failures:
        raise SystemExit("parameter count check failed: " + "; ".join(failures))
    print("  parameter count check passed: " + ", ".join(f"{k}={v:,}" for k, v in EXPECTED_TRAINABLE.items()))
    return result


# --------------------------------------------------------------------------------------------------
# A multi-dtype checkpoint for testing model/io/tf_checkpoint.py


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


# --------------------------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in text.lower().replace("x", ",").split(",") if p]
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected B,T,H,W, got {text!r}")
    return tuple(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="output directory for the parity fixtures")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--variants", help="comma-separated variants, e.g. test_base,a0_stream")
    group.add_argument("--all", action="store_true", help=f"all official variants {ALL_VARIANTS}")
    parser.add_argument("--num-classes", type=int, help="default: 10 for the CI set, 600 otherwise")
    parser.add_argument("--input-shape", type=parse_shape, help="B,T,H,W for every variant")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--skip-param-counts", action="store_true", help="don't write param_counts.json")
    parser.add_argument(
        "--tf-checkpoint-fixture", type=Path, metavar="DIR", help="write the checkpoint-reader fixture"
    )
    args = parser.parse_args(argv)

    if args.tf_checkpoint_fixture is not None:
        make_tf_checkpoint_fixture(args.tf_checkpoint_fixture, args.seed)
        if args.out is None:
            return 0
    if args.out is None:
        parser.error("--out is required")

    from official.projects.movinet.modeling import movinet

    spec_matches = register_specs(movinet)
    mismatched = [name for name, ok in spec_matches.items() if not ok]
    if mismatched:
        print(f"WARNING: model/specs.py differs from the official BLOCK_SPECS for {mismatched}")

    if args.all:
        names, default_classes = list(ALL_VARIANTS), ALL_NUM_CLASSES
    elif args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        default_classes = ALL_NUM_CLASSES
    else:
        names, default_classes = list(CI_VARIANTS), CI_NUM_CLASSES
    variants = [parse_variant(name) for name in names]
    num_classes = args.num_classes or default_classes

    args.out.mkdir(parents=True, exist_ok=True)
    print(f"TensorFlow {tf.__version__}, tf-models-official {_tf_models_version()}, out={args.out}")
    for variant in variants:
        shape = args.input_shape or CI_VARIANTS.get(variant.name, DEFAULT_INPUT)
        seed = variant_seed(args.seed, variant.name)
        print(f"[{variant.name}] input {shape}, classes {num_classes}, seed {seed} ...", flush=True)
        meta = make_variant(variant, args.out, num_classes, shape, seed)
        print(f"[{variant.name}] done in {meta['seconds']}s: {json.dumps(meta['checks'])}", flush=True)
        tf_keras.backend.clear_session()

    if not args.skip_param_counts:
        print("parameter counts (num_classes=600) ...", flush=True)
        make_param_counts(args.out, spec_matches)
    return 0


if __name__ == "__main__":
    sys.exit(main())
