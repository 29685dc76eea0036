"""Convert official MoViNet TF2 checkpoints to our PyTorch weights files.

    python -m model.convert CKPT_DIR OUT.safetensors --model movinet_a0_stream

``CKPT_DIR`` is a directory as in the official ``movinet_a0_stream.tar.gz`` releases
(``checkpoint``, ``ckpt-*.index``, ``ckpt-*.data-*``). No TensorFlow is needed: the checkpoint is
read by :mod:`model.io.tf_checkpoint`. This module owns the renaming, a pure function
(:func:`convert_tf_variables`, tested on its own), the strict load of the result into a fresh
model (:func:`convert_checkpoint`) and the command line above, which writes a weights file with
:mod:`model.io.weights` (``model/convert.py`` only runs :func:`main`).

The official object graph names weighted layers by construction order, not by name:
``model/layer_with_weights-0`` is the backbone, whose ``layer_with_weights-K`` are the stem
(K = 0), the blocks in (stage, layer) order (K = 1..L) and the head projection (K = L + 1);
``model/layer_with_weights-1`` is the classifier head (``_head`` then ``_classifier``).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import torch

from ..movinet import MoViNet
from ..registry import build_model
from .tf_checkpoint import read_tf_checkpoint
from .weights import load_state_dict_strict, save_weights

_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
_BACKBONE = re.compile(r"^model/layer_with_weights-0/layer_with_weights-(\d+)/(.+)$")
_CLASSIFIER = re.compile(r"^model/layer_with_weights-1/(.+)$")


def _kernel_to_torch(value: np.ndarray, depthwise: bool, temporal: bool) -> np.ndarray:
    """TF kernel layouts (channels-last) -> ``Conv3d.weight`` ``[out, in/groups, kt, kh, kw]``."""
    if value.ndim == 5:  # Conv3D [kt, kh, kw, in, out] (depthwise: [kt, kh, kw, 1, E])
        return value.transpose(4, 3, 0, 1, 2)
    if value.ndim == 4 and depthwise:  # DepthwiseConv2D [kh, kw, E, 1] -> [E, 1, kh, kw]
        weight = value.transpose(2, 3, 0, 1)
        # a temporal (kt, 1) depthwise conv runs on [B, T, H*W, C]: its rows are time
        return weight[:, :, :, :, None] if temporal else weight[:, :, None]
    if value.ndim == 4:  # Conv2D [kh, kw, in, out] -> [out, in, 1, kh, kw]
        return value.transpose(3, 2, 0, 1)[:, :, None]
    raise ValueError(f"unexpected kernel of shape {value.shape}")


def _leaf_name(path: str, value: np.ndarray) -> str:
    """Map the tail of a TF variable path inside one conv block to ``conv.weight``/``bn.weight``/..."""
    leaf = path.rsplit("/", 1)[-1]
    temporal = "temporal" in path
    if leaf in ("kernel", "depthwise_kernel"):
        return ("conv_temporal" if temporal else "conv") + ".weight"
    if leaf == "bias":
        return "conv.bias"
    if leaf in _BN:
        return ("bn_temporal" if temporal else "bn") + "." + _BN[leaf]
    raise ValueError(f"unexpected variable {path}")


def _block_target(path: str) -> str:
    """Our module path inside a MovinetBlock for the TF attribute path of one of its variables."""
    if path.endswith("_pos_encoding/_rezero/scale"):
        return "se.pos_scale"
    if path.endswith("_rezero/scale"):
        return "rezero"
    for token, target in (
        ("_skip/", "skip"),
        ("_se_reduce/", "se.reduce"),
        ("_se_expand/", "se.expand"),
        ("_expansion/", "expansion"),
        ("_feature/", "feature"),
        ("_projection/", "projection"),
    ):
        if token in path or path.startswith(token):
            leaf = _leaf_name(path, np.empty(0))
            if target.startswith("se."):
                leaf = leaf.replace("conv.", "")  # SE convs are bare nn.Conv3d modules
            return f"{target}.{leaf}"
    raise ValueError(f"unexpected block variable {path}")


def convert_tf_variables(variables: dict[str, np.ndarray], net: MoViNet) -> dict[str, torch.Tensor]:
    """Rename and re-layout official TF checkpoint variables into ``net``'s state dict names.

    Pure function: no I/O. Raises ``ValueError`` naming any variable of the model graph that has
    no place in ``net`` (optimizer slots and other roots are ignored).
    """
    num_blocks = len(net.blocks)
    out: dict[str, torch.Tensor] = {}
    unplaced = []
    for raw_key, value in variables.items():
        if not raw_key.endswith(_SUFFIX) or not raw_key.startswith("model/"):
            continue  # save_counter, optimizer slots, "backbone/..." duplicates of the same variables
        key = raw_key[: -len(_SUFFIX)]
        if "/.OPTIMIZER_SLOT/" in raw_key:
            continue
        try:
            if match := _BACKBONE.match(key):
                index, path = int(match.group(1)), "/" + match.group(2)
                if index == 0:
                    target = "stem." + _leaf_name(path, value)
                elif index <= num_blocks:
                    target = f"blocks.{index - 1}." + _block_target(path)
                elif index == num_blocks + 1:
                    target = "head." + _leaf_name(path, value)
                else:
                    raise ValueError(f"backbone layer {index} beyond the {num_blocks} blocks of {net.name}")
            elif match := _CLASSIFIER.match(key):
                path = "/" + match.group(1)
                part = "hidden" if path.startswith("/_head/") else "logits" if path.startswith("/_classifier/") else None
                if part is None:
                    raise ValueError(f"unexpected classifier variable {key}")
                target = f"classifier.{part}." + _leaf_name(path, value).replace("conv.", "")
            else:
                raise ValueError(f"unexpected variable {key}")
        except ValueError as error:
            unplaced.append(str(error))
            continue
        if target.endswith(".weight") and value.ndim >= 4:
            leaf = key.rsplit("/", 1)[-1]
            value = _kernel_to_torch(value, leaf == "depthwise_kernel", "temporal" in key)
        if target.endswith(("rezero", "pos_scale")):
            if value.size != 1:
                raise ValueError(f"{key}: expected one scale value, got shape {value.shape}")
            value = value.reshape(())  # TF's Scale layer stores a [1] vector
        if target in out:
            raise ValueError(f"two checkpoint variables map to {target} (the second is {key})")
        out[target] = torch.from_numpy(np.array(value, order="C"))  # ascontiguousarray would make 0-d arrays 1-d
    if unplaced:
        raise ValueError(f"{len(unplaced)} checkpoint variables have no place in {net.name}: " + "; ".join(unplaced[:10]))
    return out


def infer_num_classes(variables: dict[str, np.ndarray]) -> int:
    for key, value in variables.items():
        if key.startswith("model/layer_with_weights-1/_classifier/") and key.endswith("bias" + _SUFFIX):
            return int(value.shape[0])
    raise ValueError("the checkpoint has no classifier bias (model/layer_with_weights-1/_classifier/...)")


def convert_checkpoint(
    checkpoint: str | Path, name: str, labels: list[str] | None = None, **overrides
) -> MoViNet:
    """Read an official checkpoint directory (or prefix) and return the loaded PyTorch model."""
    variables = read_tf_checkpoint(checkpoint)
    num_classes = infer_num_classes(variables)
    net = build_model(name, num_classes, labels=labels, **overrides)
    tensors = convert_tf_variables(variables, net)
    load_state_dict_strict(net, tensors, f"checkpoint {checkpoint}")
    return net.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="official TF2 checkpoint directory (or ckpt prefix)")
    parser.add_argument("output", help="output .safetensors file")
    parser.add_argument("--model", required=True, help="e.g. movinet_a0_stream (see model.list_models())")
    parser.add_argument("--labels", help="text file with one label per line (default: Kinetics-600 for 600 classes)")
    parser.add_argument(
        "--hard-sigmoid",
        default="keras2",
        choices=("keras2", "model_garden", "torch"),
        help="SE gate of stream models; the released checkpoints use keras2 = clip(0.2x+0.5, 0, 1)",
    )
    args = parser.parse_args(argv)
    labels = None
    if args.labels:
        labels = [line.strip() for line in Path(args.labels).read_text().splitlines() if line.strip()]
    try:
        overrides = {"hard_sigmoid": args.hard_sigmoid} if args.model.endswith("_stream") else {}
        net = convert_checkpoint(args.checkpoint, args.model, labels=labels, **overrides)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    path = save_weights(net, args.output, extra={"source": str(Path(args.checkpoint).name)})
    params = sum(p.numel() for p in net.parameters())
    print(f"wrote {path} ({net.name}, {net.num_classes} classes, {params:,} parameters)")
    return 0
