"""Convert official MoViNet TF2 checkpoints and SavedModels to our PyTorch weights files.

    python -m model.convert CKPT_DIR OUT.safetensors --model movinet_a0_stream
    python -m model.convert SAVED_MODEL_DIR OUT.safetensors --model movinet_a0_stream --labels labels.txt

``CKPT_DIR`` is a directory as in the official ``movinet_a0_stream.tar.gz`` releases
(``checkpoint``, ``ckpt-*.index``, ``ckpt-*.data-*``); ``SAVED_MODEL_DIR`` a SavedModel as the
official fine-tuning tutorial exports it (``export_saved_model``, ``tf.saved_model.save``): its
``variables/`` bundle is read, renamed through its object graph (:mod:`model.io.tf_saved_model`),
and any class count is taken from the classifier in the file. No TensorFlow is needed: the
bundles are read by :mod:`model.io.tf_checkpoint`. This module owns the renaming, a pure function
(:func:`convert_tf_variables`, tested on its own), the strict load of the result into a fresh
model (:func:`convert_checkpoint`) and the command line above, which writes a weights file with
:mod:`model.io.weights` (labels, input size, frame rate and window in its metadata;
``model/convert.py`` only runs :func:`main`). Bad input is one ``error:`` line and exit code 2.

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
from ..registry import build_model, list_models, model_info
from .tf_checkpoint import read_tf_checkpoint
from .tf_saved_model import is_saved_model, read_saved_model_variables
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


def count_blocks(variables: dict[str, np.ndarray]) -> int | None:
    """MovinetBlocks in the checkpoint's backbone (its weighted layers but the stem and the head)."""
    layers = {int(m.group(1)) for key in variables if (m := _BACKBONE.match(key))}
    return len(layers) - 2 if layers else None


def check_model_size(variables: dict[str, np.ndarray], net: MoViNet, source: str | Path) -> None:
    """``ValueError`` naming the models that fit when the file's backbone has another number of blocks."""
    found = count_blocks(variables)
    if found is None or found == len(net.blocks):
        return
    fits = [name for name in list_models() if name.endswith(net.info.mode) and not name.startswith("movinet_test")
            and len(build_model(name, 1).blocks) == found]
    hint = f" (it fits {', '.join(fits)}: pass that as --model)" if fits else ""
    raise ValueError(f"{source} holds a MoViNet of {found} blocks, {net.name} has {len(net.blocks)}: "
                     f"another model size{hint}")


def infer_num_classes(variables: dict[str, np.ndarray]) -> int:
    for key, value in variables.items():
        if key.startswith("model/layer_with_weights-1/_classifier/") and key.endswith("bias" + _SUFFIX):
            return int(value.shape[0])
    raise ValueError("the checkpoint has no classifier bias (model/layer_with_weights-1/_classifier/...)")


def saved_model_folder(path: str | Path) -> Path | None:
    """The SavedModel folder ``path`` is (or whose ``variables/`` folder it is), else ``None``."""
    path = Path(path)
    if is_saved_model(path):
        return path
    if path.name == "variables" and (path / "variables.index").is_file():
        return path.parent
    return None


def read_tf_variables(path: str | Path) -> dict[str, np.ndarray]:
    """The variables of a checkpoint (directory, prefix or ``.index``) or of a SavedModel folder, keyed as a checkpoint keys them."""
    if (folder := saved_model_folder(path)) is not None:
        return read_saved_model_variables(folder)
    path = Path(path)
    if path.is_dir() and not any(path.glob("*.index")) and not (path / "checkpoint").is_file():
        raise ValueError(f"{path}: neither a TF checkpoint (checkpoint, *.index) nor a SavedModel "
                         "(saved_model.pb, variables/variables.index)")
    return read_tf_checkpoint(path)


def convert_checkpoint(
    checkpoint: str | Path, name: str, labels: list[str] | None = None, info_overrides: dict | None = None,
    **overrides,
) -> MoViNet:
    """Read an official checkpoint directory (or prefix) or a SavedModel folder and return the loaded PyTorch model."""
    variables = read_tf_variables(checkpoint)
    num_classes = infer_num_classes(variables)
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given, but the classifier in {checkpoint} has {num_classes} classes")
    net = build_model(name, num_classes, labels=labels, info_overrides=info_overrides, **overrides)
    check_model_size(variables, net, checkpoint)
    tensors = convert_tf_variables(variables, net)
    kind = "checkpoint" if saved_model_folder(checkpoint) is None else "SavedModel"
    load_state_dict_strict(net, tensors, f"{kind} {checkpoint}")
    return net.eval()


def read_labels(path: str | Path) -> list[str]:
    """One label per line (blank lines skipped); ``ValueError`` for a missing, empty or repeating file."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the labels file {path}: {getattr(error, 'strerror', None) or error}") from None
    labels = [line.strip() for line in lines if line.strip()]
    if not labels:
        raise ValueError(f"the labels file {path} has no labels (one per line)")
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"the labels file {path} repeats {', '.join(map(repr, repeated))}")
    return labels


def info_overrides(name: str, size: int | None, fps: float | None, frames: int | None) -> dict:
    """``ModelInfo`` fields a converted model was trained with, where they differ from the official defaults."""
    info, overrides = model_info(name), {}
    if size is not None:
        overrides["input_size"] = size
        overrides["eval_min_size"] = max(size, int(round(size * info.eval_min_size / info.input_size)))
    if fps is not None:
        overrides["frame_rate"] = fps
    if frames is not None:
        overrides["clip_frames"] = frames
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.convert", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="official TF2 checkpoint directory (or ckpt prefix), or a SavedModel folder")
    parser.add_argument("output", help="output .safetensors file")
    parser.add_argument("--model", required=True, help="e.g. movinet_a0_stream (see model.list_models())")
    parser.add_argument("--labels", help="text file with one label per line, as many as the classifier's classes "
                        "(default: Kinetics-600 for 600 classes, else class_0, class_1, ...)")
    parser.add_argument(
        "--hard-sigmoid",
        default="auto",
        choices=("auto", "keras2", "model_garden", "torch"),
        help="SE gate of stream models; auto: keras2 = clip(0.2x+0.5, 0, 1) for a checkpoint (the released ones), "
             "model_garden = relu6(x+3)*0.16667 for a SavedModel (what today's tf-models-official exports compute)",
    )
    parser.add_argument("--size", type=int, help="input size the model was trained at (default: the official one)")
    parser.add_argument("--fps", type=float, help="frame rate it was trained at (default: the official one)")
    parser.add_argument("--frames", type=int, help="frames of its training clips, the service's window")
    args = parser.parse_args(argv)
    try:
        labels = read_labels(args.labels) if args.labels else None
        overrides = {}
        if args.model.endswith("_stream"):
            gate = args.hard_sigmoid
            if gate == "auto":
                gate = "keras2" if saved_model_folder(args.checkpoint) is None else "model_garden"
            overrides["hard_sigmoid"] = gate
        info = info_overrides(args.model, args.size, args.fps, args.frames)
        net = convert_checkpoint(args.checkpoint, args.model, labels=labels, info_overrides=info, **overrides)
        source = Path(args.checkpoint).resolve().name
        extra = {"source": source, "source_format": "checkpoint" if saved_model_folder(args.checkpoint) is None
                 else "saved_model"}
        path = save_weights(net, args.output, extra=extra)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    params = sum(p.numel() for p in net.parameters())
    gate = f", hard_sigmoid={net.mode.hard_sigmoid}" if net.causal else ""
    print(f"wrote {path} ({net.name}, {net.num_classes} classes, {params:,} parameters{gate})")
    return 0
