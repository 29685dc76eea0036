"""Read the variables of a TensorFlow SavedModel with numpy alone, named as a training checkpoint names them.

A SavedModel folder (``tf.saved_model.save``, ``tf_keras.models.save_model``, the official
MoViNet ``export_saved_model``) keeps its variables in the same tensor bundle format as a
checkpoint::

    <dir>/saved_model.pb                              the graph (not read here)
    <dir>/variables/variables.index, .data-*-of-*     the tensor bundle

but the bundle's keys are the *first* path to each variable in the SavedModel's object graph, and
Keras adds short ones: ``variables/0/.ATTRIBUTES/VARIABLE_VALUE`` instead of
``layer_with_weights-0/layer_with_weights-0/_stem/_conv/_conv/kernel/...``. The structure is in
the bundle's ``_CHECKPOINTABLE_OBJECT_GRAPH`` string, a serialized ``TrackableObjectGraph``
(every object's named children and its tensors' checkpoint keys). This module owns parsing that
proto (:func:`parse_object_graph`), re-deriving the names ``tf.train.Checkpoint`` would give
(:func:`object_paths`: breadth-first from the root, children in their order, as TF names them,
leaving out the edges a SavedModel adds), telling a SavedModel folder apart
(:func:`is_saved_model`) and reading one (:func:`read_saved_model_variables`).

Anything malformed raises ``ValueError`` naming the folder and what is wrong.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .tf_bundle_index import parse_message
from .tf_checkpoint import read_tf_checkpoint

__all__ = [
    "SAVED_MODEL_EDGES",
    "TrackableObject",
    "is_saved_model",
    "object_paths",
    "parse_object_graph",
    "read_saved_model_variables",
]

PathLike = str | os.PathLike
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# Children that Keras' SavedModel serialization (and compile()) adds next to a model's own layers:
# lists of the same variables, the Keras API object (metrics), the optimizer, the signatures.
# A training checkpoint of the network has none of them on the way to its variables.
SAVED_MODEL_EDGES = frozenset(
    {"variables", "trainable_variables", "non_trainable_variables", "keras_api", "optimizer", "signatures"}
)


@dataclass(frozen=True)
class TrackableObject:
    """One node of a ``TrackableObjectGraph``: its children (name, node id) and tensors (name, checkpoint key)."""

    children: tuple[tuple[str, int], ...]
    tensors: tuple[tuple[str, str], ...]


def parse_object_graph(data: bytes, where: str = "object graph") -> list[TrackableObject]:
    """Decode a serialized ``tensorflow.TrackableObjectGraph``; node 0 is the root."""
    nodes = []
    for index, raw_node in enumerate(parse_message(data, where).get(1, [])):
        node_where = f"{where} (node {index})"
        fields = parse_message(raw_node, node_where)
        children = []
        for raw in fields.get(1, []):  # ObjectReference: node_id = 1, local_name = 2
            reference = parse_message(raw, node_where)
            children.append((_text(reference, 2, node_where), _int(reference, 1)))
        tensors = []
        for raw in fields.get(2, []):  # SerializedTensor: name = 1, full_name = 2, checkpoint_key = 3
            tensor = parse_message(raw, node_where)
            tensors.append((_text(tensor, 1, node_where), _text(tensor, 3, node_where)))
        nodes.append(TrackableObject(tuple(children), tuple(tensors)))
    if not nodes:
        raise ValueError(f"{where}: the object graph has no nodes")
    for index, node in enumerate(nodes):
        for name, child in node.children:
            if not 0 <= child < len(nodes):
                raise ValueError(f"{where}: node {index} child {name!r} points at node {child} of {len(nodes)}")
    return nodes


def object_paths(nodes: list[TrackableObject], skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """Checkpoint key of every tensor reachable from the root -> the key its object path gives it.

    The path is the first one breadth-first from the root, children in their stored order, which
    is how ``tf.train.Checkpoint`` names what it saves (``a/b/kernel/.ATTRIBUTES/VARIABLE_VALUE``);
    edges named in ``skip`` are not followed. For a checkpoint's own graph this is the identity.
    """
    paths: dict[int, str] = {0: ""}
    queue = deque([0])
    while queue:
        node = queue.popleft()
        for name, child in nodes[node].children:
            if name in skip or child in paths:
                continue
            paths[child] = f"{paths[node]}/{name}" if paths[node] else name
            queue.append(child)
    keys = {}
    for node, path in paths.items():
        for name, checkpoint_key in nodes[node].tensors:
            keys[checkpoint_key] = f"{path}/.ATTRIBUTES/{name}" if path else f".ATTRIBUTES/{name}"
    return keys


def is_saved_model(path: PathLike) -> bool:
    """A folder with a ``saved_model.pb`` (or ``.pbtxt``) or a ``variables/variables.index`` bundle."""
    path = Path(path)
    return path.is_dir() and (
        (path / "variables" / "variables.index").is_file()
        or (path / "saved_model.pb").is_file()
        or (path / "saved_model.pbtxt").is_file()
    )


def read_saved_model_variables(path: PathLike, *, root: str = "model") -> dict[str, np.ndarray]:
    """The SavedModel's network variables keyed as ``tf.train.Checkpoint(model=<saved object>)`` keys them.

    ``model/layer_with_weights-0/.../kernel/.ATTRIBUTES/VARIABLE_VALUE`` (``root`` is the first
    component): what :func:`model.io.convert.convert_tf_variables` reads from a training
    checkpoint. Tensors the network does not own (Keras metrics, the optimizer's step and
    learning rate, their slots) are left out, as that function leaves out a checkpoint's other
    roots. Raises ``ValueError`` for a folder that is not a SavedModel or has no variables.
    """
    path = Path(path)
    bundle = path / "variables" / "variables"
    if not Path(f"{bundle}.index").is_file():
        if is_saved_model(path):
            raise ValueError(f"{path}: a SavedModel without its variables (no variables/variables.index)")
        raise ValueError(f"{path}: not a SavedModel (no saved_model.pb and no variables/variables.index)")
    tensors = read_tf_checkpoint(bundle, include_strings=True)
    graph = tensors.pop(OBJECT_GRAPH_KEY, None)
    if graph is None or graph.shape != ():
        raise ValueError(f"{bundle}.index: no {OBJECT_GRAPH_KEY} tensor; cannot tell what its variables are")
    renamed = object_paths(parse_object_graph(graph.item(), f"{bundle}.index ({OBJECT_GRAPH_KEY})"), SAVED_MODEL_EDGES)
    out = {}
    for key, value in tensors.items():
        if value.dtype == object or key not in renamed:
            continue  # other string tensors; tensors reached only through the edges a SavedModel adds
        out[f"{root}/{renamed[key]}"] = value
    return out


def _text(fields: dict[int, list], number: int, where: str) -> str:
    values = fields.get(number)
    if not values:
        return ""
    try:
        return values[-1].decode("utf-8")
    except (AttributeError, UnicodeDecodeError):
        raise ValueError(f"{where}: field {number} is not a UTF-8 string") from None


def _int(fields: dict[int, list], number: int) -> int:
    values = fields.get(number)
    return int(values[-1]) if values else 0
