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
(``--tf-checkpoint-fixture DIR``), and a fine-tuned user's SavedModel as the official tutorial
exports it (``--saved-model-fixture DIR``: A0 stream, 3 classes, its ``variables/`` bundle and the
logits of the exported model run frame by frame).

Usage (from the repository root)::

    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --out tests/fixtures/parity
    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --out .cache/parity-all --all
    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --tf-checkpoint-fixture tests/fixtures/tf_checkpoint
    $TFREF_VENV/bin/python tools/make_parity_fixtures.py --saved-model-fixture tests/fixtures/saved_model

The command line is here; the work is in ``tools/_parity/`` (variants, specs, the oracle network,
the fixture files, the checkpoint-reader fixture, the SavedModel fixture).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from _parity.fixtures import make_param_counts, make_variant, tf_models_version  # noqa: E402
from _parity.saved_model_fixture import make_saved_model_fixture  # noqa: E402
from _parity.specs import register_specs  # noqa: E402
from _parity.tf_checkpoint_fixture import make_tf_checkpoint_fixture  # noqa: E402
from _parity.variants import (  # noqa: E402
    ALL_NUM_CLASSES,
    ALL_VARIANTS,
    CI_NUM_CLASSES,
    CI_VARIANTS,
    DEFAULT_INPUT,
    DEFAULT_SEED,
    parse_variant,
    variant_seed,
)

tf.get_logger().setLevel("ERROR")  # the official Conv3D re-traces per shape and warns each time


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
    parser.add_argument(
        "--saved-model-fixture", type=Path, metavar="DIR", help="write the SavedModel fixture (A0 stream, 3 classes)"
    )
    args = parser.parse_args(argv)

    if args.tf_checkpoint_fixture is not None:
        make_tf_checkpoint_fixture(args.tf_checkpoint_fixture, args.seed)
    if args.saved_model_fixture is not None:
        make_saved_model_fixture(args.saved_model_fixture, args.seed)
    if args.out is None:
        if args.tf_checkpoint_fixture is not None or args.saved_model_fixture is not None:
            return 0
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
    print(f"TensorFlow {tf.__version__}, tf-models-official {tf_models_version()}, out={args.out}")
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
