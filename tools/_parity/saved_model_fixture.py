"""A fine-tuned user's SavedModel: the official A0 stream classifier with a small head, exported the official way.

This module owns ``tests/fixtures/saved_model/``: ``movinet.Movinet`` (a0, the stream
configuration) in ``MovinetClassifier(num_classes=3)`` with seeded non-trivial weights (the
oracle's, BN calibrated on the stored clip), exported with the official
``official.projects.movinet.tools.export_saved_model.export_saved_model(..., causal=True)``, which
is what the fine-tuning tutorial calls (a one-frame ``call`` signature with the states as inputs
and outputs, plus ``init_states``). The expected logits come from the exported SavedModel itself,
loaded back with ``tf.saved_model.load`` and run frame by frame; the live model's whole-clip
logits are kept too. Only what the converter reads is committed (``variables/``): the graph
(``saved_model.pb``) is tens of megabytes; its size is recorded in ``meta.json``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from .fixtures import tf_models_version
from .oracle import build_model, calibrate_batch_norm, count_params, init_states, jit_call, randomise_weights
from .variants import parse_variant, variant_seed

SAVED_MODEL_VARIANT = "a0_stream"
SAVED_MODEL_CLASSES = 3
SAVED_MODEL_LABELS = ("pour tea", "water plants", "fold paper")
SAVED_MODEL_INPUT = (2, 4, 65, 65)  # B, T, H, W: odd sizes, both SAME padding cases
COMMITTED = ("variables/variables.index", "variables/variables.data-00000-of-00001")


def make_saved_model_fixture(out_dir: Path, base_seed: int) -> dict:
    from official.projects.movinet.tools import export_saved_model

    started = time.monotonic()
    variant = parse_variant(SAVED_MODEL_VARIANT)
    seed = variant_seed(base_seed, "saved_model_" + variant.name)
    rng = np.random.default_rng(seed)
    tf.random.set_seed(seed)
    model = build_model(variant, SAVED_MODEL_CLASSES)
    randomise_weights(model, rng)
    batch, frames, height, width = SAVED_MODEL_INPUT
    video = rng.uniform(0.0, 1.0, size=(batch, frames, height, width, 3)).astype(np.float32)
    calibrate_batch_norm(model, {"image": tf.constant(video), **init_states(model, video.shape)}, rng)
    logits_clip, _ = jit_call(model)({**init_states(model, video.shape), "image": tf.constant(video)})

    with tempfile.TemporaryDirectory() as scratch:
        export_dir = Path(scratch) / "saved_model"
        # the tutorial's streaming export: one frame per call, the states in and out
        export_saved_model.export_saved_model(
            model=model, input_shape=[batch, 1, height, width, 3], export_path=str(export_dir), causal=True
        )
        sizes = {str(p.relative_to(export_dir)): p.stat().st_size for p in sorted(export_dir.rglob("*")) if p.is_file()}
        logits_steps = run_exported(export_dir, video)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        (out_dir / "variables").mkdir(parents=True)
        for name in COMMITTED:
            shutil.copyfile(export_dir / name, out_dir / name)

    clip_vs_steps = float(np.max(np.abs(logits_clip.numpy() - logits_steps[-1])))
    if not np.all(np.isfinite(logits_steps)) or clip_vs_steps > 1e-4:
        raise ValueError(f"the exported SavedModel disagrees with the live model ({clip_vs_steps})")
    np.savez(out_dir / "io.npz", input=video, logits_clip=logits_clip.numpy(), logits_steps=logits_steps)
    (out_dir / "labels.txt").write_text("".join(f"{label}\n" for label in SAVED_MODEL_LABELS))
    trainable, non_trainable = count_params(model)
    meta = {
        "backbone": variant.backbone,
        "mode": variant.mode,
        "num_classes": SAVED_MODEL_CLASSES,
        "hard_sigmoid": "model_garden",
        "input_shape": list(video.shape),
        "export": "official.projects.movinet.tools.export_saved_model.export_saved_model(causal=True, "
                  f"input_shape=[{batch}, 1, {height}, {width}, 3])",
        "tensorflow": tf.__version__,
        "tf_models_official": tf_models_version(),
        "seed": seed,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "saved_model_files": sizes,
        "committed": list(COMMITTED),
        "checks": {
            "max_abs_clip_vs_saved_model_last_step": clip_vs_steps,
            "logits_std": float(np.std(logits_steps)),
            "logits_max_abs": float(np.max(np.abs(logits_steps))),
        },
        "seconds": round(time.monotonic() - started, 1),
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {out_dir}: {json.dumps(meta['checks'])}; files {sizes}")
    return meta


def run_exported(export_dir: Path, video: np.ndarray) -> np.ndarray:
    """The exported SavedModel, loaded back as a user would, fed one frame at a time: logits ``[T, B, N]``."""
    loaded = tf.saved_model.load(str(export_dir))
    call, init = loaded.signatures["call"], loaded.signatures["init_states"]
    states = init(tf.constant([video.shape[0], 1, *video.shape[2:]], tf.int32))
    steps = []
    for t in range(video.shape[1]):
        outputs = call(**states, image=tf.constant(video[:, t : t + 1]))
        steps.append(outputs.pop("logits").numpy())
        states = outputs
    return np.stack(steps)

