"""What every section of ``benchmarks/gpu.py`` shares.

This module owns the time budget (a deadline with sub-deadlines per section), timing a step,
the device (synchronise, free memory, bf16 autocast), building a model ready for inference (BN
folded where ``model.optimize`` offers it), and turning an error into one table cell.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass

import torch

import model

# --- timing --------------------------------------------------------------------------------------


class Budget:
    """A deadline; ``share(fraction)`` is a sub-deadline for one section."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def share(self, seconds: float) -> Budget:
        return Budget(max(0.0, min(seconds, self.left())))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def measure(step, *, warmup: int, min_steps: int, max_steps: int, max_seconds: float, sync) -> list[float]:
    """Step times in ms: ``warmup`` untimed steps, then ``min_steps``..``max_steps`` within ``max_seconds``."""
    for _ in range(warmup):
        step()
    sync()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < max_steps and (len(samples) < min_steps or time.perf_counter() - started < max_seconds):
        begin = time.perf_counter()
        step()
        sync()
        samples.append((time.perf_counter() - begin) * 1000)
    return samples


# --- devices -------------------------------------------------------------------------------------


@dataclass
class Device:
    name: str  # "cuda" or "cpu"

    @property
    def cuda(self) -> bool:
        return self.name == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()

    def autocast(self, precision: str):
        if precision == "fp32":
            return contextlib.nullcontext()
        # cache_enabled=False: a cast cache from outside a CUDA graph capture must not leak into it
        return torch.autocast(self.name, dtype=torch.bfloat16, cache_enabled=False)


def out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def describe(error: BaseException) -> str:
    """One short line for a table cell."""
    lines = str(error).strip().splitlines() or [""]
    return f"error: {type(error).__name__}: {lines[0][:100]}"


def inference_model(name: str, device: Device, weights: str | None = None, perturb: bool = False):
    """``(model, bn_folded)``: eval mode, on the device, BN folded when ``model.optimize`` offers it.

    ``perturb`` gives a random model non-trivial numbers (ReZero and PE scales, BN statistics), as
    the tests do: freshly initialised blocks are identities (ReZero 0), which says nothing about
    precision. Speed does not depend on the weights.
    """
    net = model.create_model(name, weights=weights).eval()
    if weights is None and perturb:
        generator = torch.Generator().manual_seed(0)

        def uniform(tensor, low, high):
            tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

        with torch.no_grad():
            for param_name, param in net.named_parameters():
                if param_name.endswith(("rezero", "pos_scale")):
                    uniform(param, 0.3, 1.0)
            for module in net.modules():
                if isinstance(module, torch.nn.BatchNorm3d):
                    uniform(module.weight, 0.5, 1.5)
                    uniform(module.bias, -0.1, 0.1)
                    uniform(module.running_mean, -0.1, 0.1)
                    uniform(module.running_var, 0.5, 1.5)
    folded = False
    try:
        from model.optimize import optimize_for_inference

        net, folded = optimize_for_inference(net), True
    except (ImportError, TypeError, AttributeError):  # another revision of model.optimize
        pass
    return net.to(device.name), folded


def state_bytes(net: model.MoViNet, size: int) -> int:
    return sum(value.numel() * value.element_size() for value in net.init_state(1, size, size).values())
