"""The parity fixture files: one directory per variant, and ``param_counts.json``.

This module owns what is written: per variant the checkpoint (saved as the released ones were,
``Checkpoint(model=model)``), ``io.npz`` and ``meta.json`` with how it was made and its checks;
and the parameter counts and stream state shapes of every backbone, checked against the counts
measured on the official code.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras

from .oracle import (
    build_model,
    calibrate_batch_norm,
    check_restore,
    count_params,
    init_states,
    randomise_weights,
    run_base,
    run_stream,
)
from .variants import ALL_NUM_CLASSES, BACKBONES, Variant, parse_variant

# Parameter counts of MovinetClassifier(num_classes=600) measured on the official code; a mismatch
# means the oracle environment is not the one the references were made with.
EXPECTED_TRAINABLE = {"a0_base": 3_111_799, "a0_stream": 3_748_031, "a5_stream": 31_495_934}
STATE_SHAPE_INPUT = (1, 8, 172, 172, 3)


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
        "tf_models_official": tf_models_version(),
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


def tf_models_version() -> str:
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
        "tf_models_official": tf_models_version(),
        "project_specs_match_official": spec_matches,
        "models": entries,
    }
    (out_dir / "param_counts.json").write_text(json.dumps(result, indent=1) + "\n")
    if failures:
        raise SystemExit("parameter count check failed: " + "; ".join(failures))
    print("  parameter count check passed: " + ", ".join(f"{k}={v:,}" for k, v in EXPECTED_TRAINABLE.items()))
    return result
