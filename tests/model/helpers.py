"""Shared test helpers: models with non-trivial random weights (ReZero, BN statistics, PE scales)."""

from __future__ import annotations

import torch

import model


def randomized(name: str, num_classes: int = 7, seed: int = 0, **overrides) -> model.MoViNet:
    """A model whose every block matters: random BN statistics, ReZero and PE scales non-zero."""
    torch.manual_seed(seed)
    net = model.create_model(name, num_classes=num_classes, **overrides)
    with torch.no_grad():
        for param_name, param in net.named_parameters():
            if param_name.endswith("rezero") or param_name.endswith("pos_scale"):
                param.uniform_(0.3, 1.0)
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net.eval()
