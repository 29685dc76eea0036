"""Inference-time speed-ups that keep the numbers: BN folding, a one-frame graph, compilation.

``for_streaming(net)`` is the front door for live streams: it returns a :class:`StreamStep`,
``logits, state = step(frames [B, 3, 1, H, W], state)``, the model's own one-frame call for any
batch of sessions at any positions in their streams, run by the fastest path this machine has
that agrees with the model. The paths, fastest first:

* ``"compiled"``: :class:`FrameGraph` through ``torch.compile`` (inductor's C++ backend, the whole
  graph in one C++ call that releases the GIL), one static graph per batch size in
  ``batch_sizes``, other batches on the eager graph; built in a background thread (or ``compile="now"``)
  and cached on disk, so a restart loads it instead of rebuilding it;
* ``"graph"``: :class:`FrameGraph` run eagerly: 2D channels-last convolutions, BN and ReZero
  folded, the temporal conv as a weighted sum of the stream buffer;
* ``"graph-trace"``: the same graph as TorchScript traces (:func:`trace_frame_graph`: plain ops,
  and oneDNN's fused ones from the same batch size as the eager graph). Alone 1.0-1.4x the eager
  graph at 64x64, and its forward runs in C++ without taking Python's GIL
  back after every op: beside other busy Python threads (a server's event loop and decoders) it
  keeps its speed where the eager graph becomes 2.4-4.1x slower (2.3-3.2x the eager graph's
  throughput there). ``shared_gil=True`` puts it first;
* ``"trace"``: the BN-folded model as a TorchScript trace (``trace_frame_step``, what the service
  ran before ``for_streaming``);
* ``"eager"``: the model itself, the reference.

Every path is run on a few frames beside the reference when it is picked (sessions at different
positions, one batch) and dropped with a logged warning if its logits differ by more than
``tolerance(precision, logit scale)``. ``optimize_for_inference(net)`` folds BN into a copy of the model and
``trace_frame_step`` traces it. ``benchmarks/fast_path.py`` measures them all (``--beside-threads``:
beside busy Python threads).
"""


from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable, Sequence

import torch

from .folding import fold_bn_into_conv, fuse_batchnorm
from .frame_graph import FrameGraph
from .movinet import MoViNet
from .stream_step import (
    DEFAULT_BATCH_SIZES,
    DTYPES,
    TOLERANCE,
    PathCheck,
    StepFn,
    StreamStep,
    check_against_reference,
    cpu_has_bf16,
    inductor_cache_dir,
    retain_freed_memory,
    tolerance,
)

__all__ = [
    "BACKENDS", "DEFAULT_BATCH_SIZES", "DTYPES", "PRECISIONS", "TOLERANCE", "FrameGraph", "PathCheck",
    "StepFn", "StreamStep", "TracedFrameGraph", "check_against_reference", "cpu_has_bf16", "fold_bn_into_conv",
    "for_streaming", "fuse_batchnorm", "inductor_cache_dir", "optimize_for_inference", "retain_freed_memory",
    "tolerance",
    "trace_frame_graph", "trace_frame_step",
]

log = logging.getLogger(__name__)

BACKENDS = ("compiled", "graph", "graph-trace", "trace", "eager")
PRECISIONS = ("fp32", "bf16")


def optimize_for_inference(net: MoViNet, *, fuse_bn: bool = True, channels_last: bool = False,
                           compile: bool = False) -> MoViNet:
    out = fuse_batchnorm(net) if fuse_bn else copy.deepcopy(net).eval()
    if channels_last:
        out = out.to(memory_format=torch.channels_last_3d)
    if compile:
        out.forward = torch.compile(out.forward, dynamic=False)
    return out


def trace_frame_step(net: MoViNet, height: int, width: int) -> torch.jit.ScriptModule:
    """A TorchScript trace of a stream model's one-frame call ``(video [B,3,1,H,W], state) ->
    (logits, state)`` for any batch size ``B`` at this frame size.

    Outputs equal the eager call (``tests/model/test_streaming.py``). What it buys is not speed
    alone: the traced graph runs in C++ without holding Python's GIL, so a server's event loop
    and decoder threads keep running while a forward is under way. ``torch.jit.trace`` is
    deprecated in torch 2.13; :func:`for_streaming` is the faster path that replaces it (its
    ``"trace"`` backend is this function).
    """
    if not net.causal:
        raise ValueError("trace_frame_step needs a stream (causal) model")
    net = net.eval()
    device = next(net.parameters()).device
    with torch.inference_mode():
        state = net.init_state(2, height, width)
        _, state = net(torch.zeros(2, 3, 1, height, width, device=device), state)  # non-zero frame counts
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        video = torch.rand(2, 3, 1, height, width, device=device)
        state = {k: v.clone() for k, v in state.items()}
        traced = torch.jit.trace(net, (video, state), strict=False, check_trace=False)
    return traced


class TracedFrameGraph:
    """:class:`FrameGraph` as TorchScript traces, one per kind of call: plain ops, and where they
    run (a CPU with oneDNN) oneDNN's fused ops, taken from ``fuse_from_pixels`` frame pixels a
    call as the eager graph does (a trace fixes the choice it was traced with, so each is traced
    once). ``logits, state = traced(frames, state)``, as the graph."""

    def __init__(self, plain: torch.jit.ScriptModule, fused: torch.jit.ScriptModule | None,
                 fuse_from_pixels: int, height: int, width: int) -> None:
        self.plain, self.fused_trace = plain, fused
        self.fused = fused is not None  # for_streaming's check turns it off where the fused ops fail
        self.fuse_from_pixels, self.frame_pixels = fuse_from_pixels, height * width

    def __call__(self, frames: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        if self.fused and frames.shape[0] * self.frame_pixels >= self.fuse_from_pixels:
            return self.fused_trace(frames, state)
        return self.plain(frames, state)


def trace_frame_graph(net: MoViNet, height: int, width: int, precision: str = "fp32") -> TracedFrameGraph:
    """:class:`FrameGraph` as TorchScript traces (:class:`TracedFrameGraph`), for any batch size at
    this frame size.

    Equal to the eager graph (``tests/model/test_fast_path.py``). The reason for it is Python's
    GIL: an eager forward gives the GIL up and takes it back at each of its few hundred ops, and
    while other Python threads of the process want it (a server's event loop, its decoders) each
    take-back waits, so the forward slows down 2.4-4.1x (64x64, 1-64 sessions, two busy threads
    beside it: docs/benchmarks.md); the trace's interpreter runs the ops without it. Why a trace
    although ``torch.jit.trace`` is deprecated: what torch recommends instead, ``torch.export``,
    gives a program that runs op by op in Python again (or through AOTInductor, a C++ build of
    minutes per model and size); the trace is built in a second from the same graph.
    """
    graph = FrameGraph(net, height, width, DTYPES[precision]).eval()
    step = StreamStep(net, height, width, precision, "graph", graph, [])
    device = next(net.parameters()).device
    threshold = graph.fuse_from_pixels
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.trace.* is deprecated", category=DeprecationWarning)
        state = step.init_state(2)
        _, state = graph(torch.zeros(2, 3, 1, height, width, device=device), state)  # non-zero frame counts
        state = step.prepare_state(state)
        frames = torch.rand(2, 3, 1, height, width, device=device)

        def trace(fuse_from_pixels: int) -> torch.jit.ScriptModule:
            graph.fuse_from_pixels = fuse_from_pixels  # the trace keeps the choice of this call
            return torch.jit.trace(graph, (frames, state), strict=False, check_trace=False)

        plain, fused = trace(1 << 62), None
        if graph.fused:
            try:
                fused = trace(0)
            except Exception as exc:  # a torch whose tracer refuses the fused calls: plain ops at every batch
                log.warning("the fused ops of %s do not trace here (%r); its trace runs plain ops", net.name, exc)
    return TracedFrameGraph(plain, fused, threshold, height, width)


def _eager_paths(net: MoViNet, height: int, width: int, precision: str,
                 shared_gil: bool = False) -> list[tuple[str, Callable[[], StepFn]]]:
    """The paths that need no compiler, fastest first, as factories (a trace takes seconds)."""
    graph = ("graph", lambda: FrameGraph(net, height, width, DTYPES[precision]).eval())
    traced = ("graph-trace", lambda: trace_frame_graph(net, height, width, precision))
    paths: list[tuple[str, Callable[[], StepFn]]] = [traced, graph] if shared_gil else [graph, traced]
    if precision == "fp32":
        paths.append(("trace", lambda: trace_frame_step(fuse_batchnorm(net), height, width)))
        paths.append(("eager", lambda: net))
    return paths


def _check_fused(graph: FrameGraph | TracedFrameGraph, step: StreamStep, net: MoViNet, height: int,
                 width: int) -> float:
    """The check once more with oneDNN's fused ops at the check's small batch (they run from
    ``fuse_from_pixels`` only); a CPU that refuses them (bf16 without AVX-512) gets the plain ops."""
    threshold, graph.fuse_from_pixels = graph.fuse_from_pixels, 0
    try:
        return check_against_reference(step, net, height, width)[0]
    except RuntimeError as exc:
        log.warning("oneDNN's fused ops fail here (%s); %s runs plain ops", exc, net.name)
        graph.fused = False
        return 0.0
    finally:
        graph.fuse_from_pixels = threshold


def for_streaming(net: MoViNet, device: str | torch.device = "cpu", precision: str = "auto",
                  backend: str = "auto", *, height: int | None = None, width: int | None = None,
                  compile: str = "background", batch_sizes: Sequence[int] | None = None,
                  freeze: bool = False, shared_gil: bool = False) -> StreamStep:
    """The fastest one-frame call of a stream model that agrees with it, as a :class:`StreamStep`.

    ``precision``: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where the CPU has native bf16 and
    the bf16 path passes its check, else fp32). ``backend``: ``"auto"`` or one of
    :data:`BACKENDS`; a path that fails to build or its check gives way to the next with a
    logged warning. ``compile`` (for ``"auto"`` and ``"compiled"``): ``"background"`` serves with
    the eager (or traced) graph while the compiled graphs build in a thread and switches when they
    pass; ``"now"`` waits; ``"off"`` never compiles; ``batch_sizes``: the static graphs to build
    (other batches run on that graph); ``freeze``: see :meth:`StreamStep.compile`.
    ``height``/``width`` default to the model's input size. ``shared_gil``: other Python threads
    of this process run while the forwards do (a server's event loop and decoders): ``"auto"``
    then tries ``"graph-trace"`` before ``"graph"``.
    """
    if not net.causal:
        raise ValueError("for_streaming needs a stream (causal) model")
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}")
    if compile not in ("background", "now", "off"):
        raise ValueError(f"compile must be 'background', 'now' or 'off', got {compile!r}")
    device = torch.device(device)
    net = net.eval().to(device)
    height = height or (net.info.input_size if net.info else None)
    width = width or height
    if not height:
        raise ValueError("give height and width: the model has no input size")
    if precision == "auto":
        precisions = ["bf16", "fp32"] if device.type == "cpu" and cpu_has_bf16() else ["fp32"]
    else:
        precisions = [precision]
    checks: list[PathCheck] = []
    for chosen in precisions:
        candidates = _eager_paths(net, height, width, chosen, shared_gil)
        if backend not in ("auto", "compiled"):
            candidates = [(name, build) for name, build in candidates if name == backend]
            if not candidates and precision != "auto":
                raise ValueError(f"backend {backend!r} has no {chosen} variant")
        for name, build in candidates:
            started = time.perf_counter()
            try:
                fn = build()
            except Exception as exc:  # a trace this torch refuses, say: the next path serves
                checks.append(PathCheck(name, chosen, float("inf"), TOLERANCE[chosen], round(time.perf_counter() - started, 1)))
                log.warning("%s path (%s) for %s cannot be built (%r); trying the next", name, chosen, net.name, exc)
                continue
            step = StreamStep(net, height, width, chosen, name, fn, checks)
            diff, scale = check_against_reference(step, net, height, width)
            if isinstance(fn, (FrameGraph, TracedFrameGraph)) and fn.fused:
                diff = max(diff, _check_fused(fn, step, net, height, width))
            allowed = tolerance(chosen, scale)
            checks.append(PathCheck(name, chosen, diff, allowed, round(time.perf_counter() - started, 1)))
            if checks[-1].passed:
                break
            log.warning("%s path (%s) for %s differs from the reference by %.2e (tolerance %.1e); trying the next",
                        name, chosen, net.name, diff, allowed)
        else:
            continue
        break
    else:
        step = StreamStep(net, height, width, "fp32", "eager", net, checks)  # the reference itself
    if backend in ("auto", "compiled") and compile != "off" and device.type == "cpu" \
            and step.backend in ("graph", "graph-trace"):
        step.compile(batch_sizes, background=compile == "background", freeze=freeze)
    return step
