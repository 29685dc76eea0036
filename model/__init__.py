"""MoViNet A0-A5 (and T0) in pure PyTorch, base and stream, with the stream state as an argument.

    import model
    net = model.create_model("movinet_a0_stream", weights="motion")
    logits, state = net(video, state)       # video float [B, 3, T, H, W] in [0, 1]

This package imports nothing from the service.
"""

from __future__ import annotations

from .io.weights import available_weights, load_model, resolve_weights, save_weights
from .movinet import MoViNet, State
from .registry import list_models, model_info
from .specs import BLOCK_SPECS, ModelInfo, ModeSpec
from .state import split_states, stack_states, state_from_bytes, state_to_bytes

__all__ = [
    "BLOCK_SPECS",
    "MoViNet",
    "ModeSpec",
    "ModelInfo",
    "State",
    "available_weights",
    "create_model",
    "list_models",
    "load_model",
    "model_info",
    "save_weights",
    "split_states",
    "stack_states",
    "state_from_bytes",
    "state_to_bytes",
]


def create_model(name: str, weights: str | None = None, num_classes: int = 600, **overrides) -> MoViNet:
    """Build a registered model (``list_models()``), optionally with weights.

    ``weights``: ``None`` (random init), a tag (``"motion"`` for the bundled A0-stream model,
    ``"kinetics600"`` for fetched official weights) or a path to a ``.safetensors`` file. Keyword
    ``overrides`` are :class:`ModeSpec` options such as ``hard_sigmoid="model_garden"``.
    """
    from .registry import build_model

    if weights is None:
        return build_model(name, num_classes, **overrides)
    path = resolve_weights(name, weights)
    net = load_model(path, **overrides)
    if net.info.name != name:
        raise ValueError(f"{path} holds {net.info.name}, not {name}")
    return net
