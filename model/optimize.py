"""Inference-time speed-ups that keep the numbers: BN folding, a one-frame graph, compilation.

``for_streaming(net)`` is the front door for live streams: it returns a :class:`StreamStep`,
``logits, state = step(frames [B, 3, 1, H, W], state)``, the model's own one-frame call for any
batch of sessions at any positions in their streams, run by the fastest path this machine has
that agrees with the model. The paths, fastest first:

* ``"compiled"``: :class:`FrameGraph` through ``torch.compile`` (inductor's C++ backend, the whole
  graph in one C++ call that releases the GIL), one static graph per batch size in
  ``batch_sizes``, larger batches run as chunks; built in a background thread (or ``compile="now"``)
  and cached on disk, so a restart loads it instead of rebuilding it;
* ``"graph"``: :class:`FrameGraph` run eagerly: 2D channels-last convolutions, BN and ReZero
  folded, the temporal conv as a weighted sum of the stream buffer;
* ``"trace"``: the BN-folded model as a TorchScript trace (``trace_frame_step``, what the service
  ran before ``for_streaming``);
* ``"eager"``: the model itself, the reference.

Every path is run on a few frames beside the reference when it is picked (sessions at different
positions, one batch) and dropped with a logged warning if its logits differ by more than
``tolerance(precision, logit scale)``. ``optimize_for_inference(net)`` folds BN into a copy of the model and
``trace_frame_step`` traces it. ``benchmarks/fast_path.py`` measures them all.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    ConvBN,
    MovinetBlock,
    Skip,
    StreamFeatureConv,
    ceil_div,
    get_activation,
    positional_encoding,
    tf_same_padding,
)
from .movinet import MoViNet, State
from .specs import ModeSpec

log = logging.getLogger(__name__)

BACKENDS = ("compiled", "graph", "trace", "eager")
PRECISIONS = ("fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Largest |logit difference| from the reference a path may show at its load check: absolute for
# fp32; bf16 keeps 8 bits of mantissa, so its bound is relative to the logits' scale (the largest
# |logit|, at least 1). docs/benchmarks.md has bf16's top-1 agreement on real video.
TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2}


def tolerance(precision: str, logit_scale: float) -> float:
    """The load check's bound on |logit difference| for ``precision`` (see ``TOLERANCE``)."""
    return TOLERANCE[precision] * (max(1.0, logit_scale) if precision == "bf16" else 1.0)
# Static graphs compiled by default, per precision. Measured on a 2-core AMD EPYC (avx512_bf16,
# docs/benchmarks.md): in fp32 the compiled graph beats the eager one at batch 1 and 8 and ties
# at 64; in bf16 it wins only at batch 1 (inductor's bf16 kernels lose to oneDNN's above that).
DEFAULT_BATCH_SIZES = {"fp32": (1, 8), "bf16": (1,)}
StepFn = Callable[[Tensor, State], "tuple[Tensor, State]"]


@torch.no_grad()
def fold_bn_into_conv(conv: nn.Conv3d, bn: nn.BatchNorm3d) -> nn.Conv3d:
    """A conv with bias equal to ``bn(conv(x))`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    fused = nn.Conv3d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, device=conv.weight.device, dtype=conv.weight.dtype,
    )
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def fuse_batchnorm(net: MoViNet) -> MoViNet:
    """A copy of ``net`` (eval mode) with every BatchNorm folded into its convolution."""
    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if isinstance(module, (ConvBN, Skip, StreamFeatureConv)) and not isinstance(module.bn, nn.Identity):
            module.conv = fold_bn_into_conv(module.conv, module.bn)
            module.bn = nn.Identity()
        if isinstance(module, StreamFeatureConv) and module.buffer_frames > 0 \
                and not isinstance(module.bn_temporal, nn.Identity):
            module.conv_temporal = fold_bn_into_conv(module.conv_temporal, module.bn_temporal)
            module.bn_temporal = nn.Identity()
    return fused


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


# --- the one-frame graph -------------------------------------------------------------------------
#
# Feature maps are (B, H, W, C) contiguous: channels last, so a 1x1x1 conv is a matmul on the
# last dimension (MKL, no layout choices left to a compiler) and a spatial conv runs on the
# channels-last view (B, C, H, W) of the same memory. Stream buffers (B, E, T, H, W) are kept in
# channels_last_3d, whose memory is (B, T, H, W, E): frame j of the buffer is a (B, H, W, E) slice.


def _apply(act: str, x: Tensor) -> Tensor:
    """The activations on full feature maps, as single ops (``hard_swish`` is ``F.hardswish``:
    ulp-level from the TF formula, and one kernel instead of four)."""
    if act == "hard_swish":
        return F.hardswish(x)
    if act == "swish":
        return F.silu(x)
    return x


class _Pointwise(nn.Module):
    """A 1x1x1 conv (BN folded, optionally scaled by ReZero) -> activation, as a matmul on (B, H, W, C)."""

    def __init__(self, conv: nn.Conv3d, act: str, dtype: torch.dtype, scale: Tensor | None = None,
                 extra_bias: Tensor | None = None) -> None:
        super().__init__()
        weight, bias = conv.weight.detach().flatten(1), conv.bias.detach()  # (C_out, C_in), (C_out,)
        if scale is not None:  # ReZero folded in: rezero * conv(x) = conv'(x)
            weight, bias = weight * scale, bias * scale
        if extra_bias is not None:
            bias = bias + extra_bias
        self.register_buffer("weight", weight.to(dtype).contiguous())
        self.register_buffer("bias", bias.to(dtype))
        self.act = act

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        y = _apply(self.act, F.linear(x, self.weight, self.bias))
        return y if residual is None else residual + y


class _Spatial(nn.Module):
    """A (1, kh, kw) conv (BN folded) -> activation on (B, H, W, C), run as a 2D conv on its
    channels-last view; TF SAME padding fixed at build time for one input size."""

    def __init__(self, conv: nn.Conv3d, in_hw: tuple[int, int], act: str, dtype: torch.dtype) -> None:
        super().__init__()
        weight = conv.weight.detach()[:, :, 0]  # (C_out, C_in/groups, kh, kw)
        self.register_buffer("weight", weight.to(dtype).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", conv.bias.detach().to(dtype))
        self.stride = tuple(conv.stride[1:])
        self.groups = conv.groups
        self.act = act
        (kh, kw), (sh, sw) = conv.kernel_size[1:], self.stride
        top, bottom = tf_same_padding(in_hw[0], kh, sh)
        left, right = tf_same_padding(in_hw[1], kw, sw)
        # symmetric padding goes into the conv; only TF's "extra pixel at the end" needs a pad op
        self.pad = None if (top == bottom and left == right) else (left, right, top, bottom)
        self.padding = (top, left) if self.pad is None else (0, 0)
        self.out_hw = (ceil_div(in_hw[0], sh), ceil_div(in_hw[1], sw))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W) channels-last view
        if self.pad is not None:
            x = F.pad(x, self.pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        return _apply(self.act, y).permute(0, 2, 3, 1)  # (B, H', W', C_out)


class _TfAvgPool(nn.Module):
    """The skip branch's 3x3 stride-2 average pool with TF's divisor (valid pixels only), on
    (B, H, W, C), the divisor precomputed for one input size."""

    def __init__(self, in_hw: tuple[int, int], dtype: torch.dtype) -> None:
        super().__init__()
        top, bottom = tf_same_padding(in_hw[0], 3, 2)
        left, right = tf_same_padding(in_hw[1], 3, 2)
        self.pad = (left, right, top, bottom)
        counts = F.avg_pool2d(F.pad(torch.ones(1, 1, *in_hw), self.pad), 3, 2, divisor_override=1)
        self.register_buffer("inv_counts", (1.0 / counts)[0, 0, :, :, None].to(dtype))  # (H', W', 1)

    def forward(self, x: Tensor) -> Tensor:
        sums = F.avg_pool2d(F.pad(x.permute(0, 3, 1, 2), self.pad), 3, 2, divisor_override=1)
        return sums.permute(0, 2, 3, 1) * self.inv_counts


class _Block(nn.Module):
    """One stream block on one frame: expansion -> spatial depthwise -> temporal depthwise over
    the stream buffer -> SE (running mean) -> projection (gate and ReZero folded) -> + skip."""

    def __init__(self, block: MovinetBlock, in_hw: tuple[int, int], mode: ModeSpec,
                 dtype: torch.dtype, se_matmul: bool) -> None:
        super().__init__()
        act = mode.activation
        feature, se, projection, rezero = block.feature, block.se, block.projection.conv, block.rezero.detach()
        self.prefix = block.prefix
        self.skip_pool = _TfAvgPool(in_hw, dtype) if block.skip is not None and block.skip.pool else None
        # with a skip conv, the projection's bias rides on the skip's: one add fewer per pixel
        self.skip = None if block.skip is None else _Pointwise(block.skip.conv, "none", dtype,
                                                               extra_bias=projection.bias.detach() * rezero)
        self.expansion = _Pointwise(block.expansion.conv, act, dtype)
        self.spatial = _Spatial(feature.conv, in_hw, act, dtype)
        self.out_hw = self.spatial.out_hw
        self.buffer_frames = feature.buffer_frames
        if self.buffer_frames:
            weight = feature.conv_temporal.weight.detach().reshape(-1, self.buffer_frames + 1)  # (E, kt), oldest first
            self.register_buffer("temporal_weight", weight.t().to(dtype).contiguous())  # (kt, E)
            self.register_buffer("temporal_bias", feature.conv_temporal.bias.detach().to(dtype))
        self.act = act
        self.se_matmul = se_matmul
        self.se_act = get_activation(mode.activation)
        self.se_gate = get_activation(mode.gating_activation, mode.hard_sigmoid)
        self.register_buffer("se_reduce_weight", se.reduce.weight.detach().flatten(1).float())  # (hidden, 2E)
        self.register_buffer("se_reduce_bias", se.reduce.bias.detach().float())
        self.register_buffer("se_expand_weight", se.expand.weight.detach().flatten(1).float())  # (E, hidden)
        self.register_buffer("se_expand_bias", se.expand.bias.detach().float())
        self.use_positional_encoding = se.use_positional_encoding
        if self.use_positional_encoding:
            self.register_buffer("pos_scale", se.pos_scale.detach().float().clone())
        projection_bias = None if self.skip is None else -projection.bias.detach() * rezero  # moved to the skip
        self.projection = _Pointwise(projection, "none", dtype, scale=rezero, extra_bias=projection_bias)

    def _linear(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        if self.se_matmul:
            return F.linear(x, weight, bias)
        # a broadcast product and a sum: for these (B, 2E) x (2E, E/4) shapes a compiler fuses it
        # into one small loop, where a GEMM call costs more than its arithmetic
        return (x[:, None, :] * weight).sum(-1) + bias

    def forward(self, x: Tensor, state: State, new_state: State) -> Tensor:
        if self.skip is None:
            shortcut = x
        else:
            shortcut = self.skip(x if self.skip_pool is None else self.skip_pool(x))  # (B, H', W', C_out)
        h = self.spatial(self.expansion(x))  # (B, H', W', E)
        if self.buffer_frames:
            key = f"{self.prefix}_stream_buffer"
            buffer = state[key].permute(0, 2, 3, 4, 1)  # (B, kt-1, H', W', E): the memory of channels_last_3d
            weight = self.temporal_weight
            t = torch.addcmul(self.temporal_bias, h, weight[self.buffer_frames])
            for j in range(self.buffer_frames):
                t = torch.addcmul(t, buffer[:, j], weight[j])
            new_buffer = torch.cat([buffer[:, 1:], h[:, None].to(buffer.dtype)], dim=1)  # (B, kt-1, H', W', E)
            new_state[key] = new_buffer.permute(0, 4, 1, 2, 3)  # (B, E, kt-1, H', W'), channels_last_3d
            h = _apply(self.act, t)
        # squeeze-excitation on [mean of every frame so far, this frame's mean], in float32
        spatial = h.mean(dim=(1, 2), dtype=torch.float32)  # (B, E)
        sums = state[f"{self.prefix}_pool_buffer"].flatten(1) + spatial
        seen = state[f"{self.prefix}_pool_frame_count"] + 1  # (B,)
        new_state[f"{self.prefix}_pool_buffer"] = sums[:, :, None, None, None]
        new_state[f"{self.prefix}_pool_frame_count"] = seen
        pooled = torch.cat([sums / seen.to(torch.float32)[:, None], spatial], dim=1)  # (B, 2E)
        if self.use_positional_encoding:
            key = f"{self.prefix}_pos_enc_frame_count"
            position = state[key]
            new_state[key] = position + 1
            encoding = positional_encoding(position[:, None], pooled.shape[1], torch.float32)  # (B, 2E, 1)
            pooled = pooled + self.pos_scale * encoding[:, :, 0]
        hidden = self.se_act(self._linear(pooled, self.se_reduce_weight, self.se_reduce_bias))
        gate = self.se_gate(self._linear(hidden, self.se_expand_weight, self.se_expand_bias))  # (B, E)
        h = h * gate.to(h.dtype)[:, None, None, :]
        return self.projection(h, residual=shortcut)  # (B, H', W', C_out)


class FrameGraph(nn.Module):
    """A stream model's one-frame step rewritten for inference, same call as the model:
    ``logits, new_state = graph(frames [B, 3, 1, H, W], state)``, same state names and shapes.

    What differs from :class:`~model.movinet.MoViNet` on one frame: feature maps channels-last
    (1x1x1 convs as matmuls, (1, k, k) convs as 2D convs), BN folded into the convs and ReZero
    into the projections, TF padding fixed for one frame size, the temporal depthwise conv as a
    weighted sum over the stream buffer, the SE's and head's running means in float32, and
    ``dtype`` (float32 or bfloat16) for the weights and feature maps. Stream buffers are returned
    in ``channels_last_3d`` and in ``dtype``; pool buffers stay float32, frame counts int32.
    Equal to the model within float rounding (``tests/model/test_fast_path.py``).
    """

    def __init__(self, net: MoViNet, height: int, width: int, dtype: torch.dtype = torch.float32,
                 se_matmul: bool = True) -> None:
        super().__init__()
        if not net.causal:
            raise ValueError("FrameGraph needs a stream (causal) model")
        net = fuse_batchnorm(net)
        self.height, self.width, self.dtype = height, width, dtype
        self.stem = _Spatial(net.stem.conv, (height, width), net.mode.activation, dtype)
        hw = self.stem.out_hw
        blocks = []
        for block in net.blocks:
            blocks.append(_Block(block, hw, net.mode, dtype, se_matmul))
            hw = blocks[-1].out_hw
        self.blocks = nn.ModuleList(blocks)
        self.head = _Pointwise(net.head.conv, net.mode.activation, dtype)
        self.hidden = _Pointwise(net.classifier.hidden, net.mode.classifier_activation, dtype)
        self.logits = _Pointwise(net.classifier.logits, "none", dtype)

    def forward(self, frames: Tensor, state: State) -> tuple[Tensor, State]:
        new_state: State = {}
        x = frames[:, :, 0].permute(0, 2, 3, 1).to(self.dtype).contiguous()  # (B, H, W, 3)
        x = self.stem(x)  # (B, H/2, W/2, F)
        for block in self.blocks:
            x = block(x, state, new_state)
        x = self.head(x)  # (B, h, w, P)
        spatial = x.mean(dim=(1, 2), dtype=torch.float32)  # (B, P)
        sums = state["state_head_pool_buffer"].flatten(1) + spatial
        seen = state["state_head_pool_frame_count"] + 1
        new_state["state_head_pool_buffer"] = sums[:, :, None, None, None]
        new_state["state_head_pool_frame_count"] = seen
        pooled = (sums / seen.to(torch.float32)[:, None]).to(self.dtype)  # running mean of every frame
        return self.logits(self.hidden(pooled)).float(), new_state


# --- choosing and checking a path ----------------------------------------------------------------


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX); elsewhere oneDNN
    emulates it and bf16 is no faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def inductor_cache_dir() -> Path:
    """Where compiled graphs are cached: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else
    ``$MOVINET_CACHE_DIR/inductor`` (default ``~/.cache/movinet/inductor``), not inductor's default
    under ``/tmp`` that a container restart wipes."""
    explicit = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if explicit:
        return Path(explicit)
    root = os.environ.get("MOVINET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "movinet"
    return Path(root) / "inductor"


def _staggered_batch(net: MoViNet, batch: int, height: int, width: int, generator: torch.Generator) -> State:
    """A reference state for ``batch`` sessions that have seen 1, 2, ... frames: one batch whose
    sessions are at different positions in their streams."""
    device = next(net.parameters()).device
    states = []
    for index in range(batch):
        state = net.init_state(1, height, width)
        for _ in range(index + 1):
            frame = torch.rand(1, 3, 1, height, width, generator=generator).to(device)
            _, state = net(frame, state)
        states.append(state)
    return {key: torch.cat([state[key] for state in states]) for key in states[0]}


@torch.no_grad()
def check_against_reference(step: StepFn, net: MoViNet, height: int, width: int, *, batch: int = 3,
                            frames: int = 3, prepare: Callable[[State], State] | None = None,
                            seed: int = 0) -> tuple[float, float]:
    """Run ``frames`` frames through ``step`` and the reference ``net`` for ``batch`` sessions at
    different positions; return the largest absolute logit difference (``inf`` if ``step``
    returns other shapes or state keys) and the largest |reference logit|."""
    generator = torch.Generator().manual_seed(seed)
    device = next(net.parameters()).device
    reference = _staggered_batch(net, batch, height, width, generator)
    candidate = prepare(dict(reference)) if prepare is not None else dict(reference)
    worst = scale = 0.0
    for _ in range(frames):
        frame = torch.rand(batch, 3, 1, height, width, generator=generator).to(device)
        want, reference = net(frame, reference)
        got, candidate = step(frame, candidate)
        if got.shape != want.shape or candidate.keys() != reference.keys():
            return float("inf"), scale
        worst = max(worst, (got.float() - want.float()).abs().max().item())
        scale = max(scale, want.abs().max().item())
    return worst, scale


def _split_batch(batch: int, sizes: Sequence[int]) -> list[int]:
    """``batch`` as compiled sizes above 1, largest first, then what is left (0, 1 or more)."""
    parts = []
    for size in sorted((size for size in sizes if size > 1), reverse=True):
        while batch >= size:
            parts.append(size)
            batch -= size
    return parts + ([batch] if batch else [])


class _Chunked:
    """Run a batch through the static graphs compiled for some batch sizes: a compiled size
    directly, a larger batch in chunks of them; a rest of 1 goes to the batch-1 graph, any other
    rest (and every batch when 1 is the only compiled size) to the eager graph, which takes any
    batch and beats running sessions one at a time."""

    def __init__(self, graphs: dict[int, StepFn], eager: StepFn) -> None:
        self.graphs = graphs
        self.eager = eager

    def __call__(self, frames: Tensor, state: State) -> tuple[Tensor, State]:
        batch = frames.shape[0]
        if batch in self.graphs:
            return self.graphs[batch](frames, state)
        parts = _split_batch(batch, self.graphs)
        if len(parts) == 1:
            return self.eager(frames, state)
        logits, states, start = [], [], 0
        for size in parts:
            chunk = slice(start, start + size)  # batch-first: every chunk of a state is a view
            run = self.graphs.get(size, self.eager)
            out, new = run(frames[chunk], {key: value[chunk] for key, value in state.items()})
            logits.append(out)
            states.append(new)
            start += size
        return torch.cat(logits), {key: torch.cat([new[key] for new in states]) for key in states[0]}


@dataclasses.dataclass
class PathCheck:
    """What the load check measured for one path."""

    backend: str
    precision: str
    max_abs_diff: float
    tolerance: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


class StreamStep:
    """The one-frame call of a stream model, run by the path :func:`for_streaming` picked.

    ``logits, state = step(frames, state)``: ``frames`` float ``[B, 3, 1, H, W]`` in ``[0, 1]``,
    ``state`` the model's state dict (any batch size, sessions at any positions; ``None`` starts
    every session), logits ``[B, classes]`` float32. The returned state is new tensors; the one
    passed in is not modified. States from :meth:`init_state` are already in the layout the fast
    paths read (stream buffers ``channels_last_3d``, in bf16 for ``precision == "bf16"``); a state
    from the model itself, ``stack_states`` or ``state_from_bytes`` is accepted and converted.
    """

    def __init__(self, net: MoViNet, height: int, width: int, precision: str, backend: str,
                 run: StepFn, checks: list[PathCheck]) -> None:
        self.net = net
        self.height, self.width = height, width
        self.precision = precision
        self.backend = backend
        self.checks = checks
        self.compiled_batch_sizes: tuple[int, ...] = ()
        self.compile_error: str | None = None
        self._run = run
        self._dtype = DTYPES[precision]
        self._buffer_keys = tuple(k for k in net.state_shapes(height, width) if k.endswith("_stream_buffer"))
        self._compile_thread: threading.Thread | None = None

    # --- the call --------------------------------------------------------------------------------

    def __call__(self, frames: Tensor, state: State | None) -> tuple[Tensor, State]:
        if frames.ndim != 5 or frames.shape[1:3] != (3, 1):
            raise ValueError(f"frames must be [B, 3, 1, H, W], got {list(frames.shape)}")
        batch, height, width = frames.shape[0], frames.shape[3], frames.shape[4]
        if (height, width) != (self.height, self.width):
            raise ValueError(f"this step was built for {self.height}x{self.width} frames, got {height}x{width}")
        state = self.init_state(batch, height, width) if state is None else self.prepare_state(state)
        with torch.inference_mode(False), torch.no_grad():
            return self._run(frames, state)

    def init_state(self, batch: int, height: int | None = None, width: int | None = None) -> State:
        """Zero state for ``batch`` new sessions, in the layout this step reads."""
        return self.prepare_state(self.net.init_state(batch, height or self.height, width or self.width))

    def prepare_state(self, state: State) -> State:
        """``state`` with its stream buffers in this step's layout (a no-op when they already are)."""
        if self.backend in ("eager", "trace"):
            return state
        state = dict(state)
        for key in self._buffer_keys:
            value = state[key]
            if value.dtype != self._dtype or not value.is_contiguous(memory_format=torch.channels_last_3d):
                state[key] = value.to(self._dtype).contiguous(memory_format=torch.channels_last_3d)
        return state

    # --- compilation -----------------------------------------------------------------------------

    def compile(self, batch_sizes: Sequence[int] | None = None, background: bool = False,
                freeze: bool = False) -> None:
        """Build the ``"compiled"`` path for these batch sizes and switch to
        it once every size passes the check; a size that fails to build or to agree leaves the
        current path in place (``compile_error`` says why). ``background=True`` returns at once;
        ``freeze=True`` prepacks the weights for oneDNN (faster, but rebuilt at every start)."""
        sizes = tuple(sorted(set(batch_sizes or DEFAULT_BATCH_SIZES[self.precision])))
        if not sizes or min(sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {batch_sizes}")
        if background:
            self._compile_thread = threading.Thread(target=self._compile, args=(sizes, freeze), daemon=True,
                                                    name=f"movinet-compile-{self.net.name}")
            self._compile_thread.start()
        else:
            self._compile(sizes, freeze)

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait for a background :meth:`compile`; ``True`` if the compiled path is now in use."""
        if self._compile_thread is not None:
            self._compile_thread.join(timeout)
        return self.backend == "compiled"

    def _compile(self, sizes: tuple[int, ...], freeze: bool) -> None:
        started = time.perf_counter()
        try:
            graphs, checks = _compile_graphs(self.net, self.height, self.width, self.precision, sizes,
                                             self.prepare_state, freeze)
        except Exception as error:  # a compiler that does not work here leaves the eager paths
            self.compile_error = f"{type(error).__name__}: {error}"[:500]
            log.warning("compiled path unavailable for %s: %s", self.net.name, self.compile_error)
            return
        self.checks.extend(checks)
        failed = [check for check in checks if not check.passed]
        if failed:
            self.compile_error = "; ".join(f"{c.backend} differs by {c.max_abs_diff:.2e} > {c.tolerance:.1e}" for c in failed)
            log.warning("compiled path for %s differs from the reference, not used: %s", self.net.name, self.compile_error)
            return
        self._run, self.backend, self.compiled_batch_sizes = _Chunked(graphs, self._run), "compiled", sizes
        log.info("compiled path for %s ready: batch sizes %s, %.0f s", self.net.name, sizes, time.perf_counter() - started)

    # --- what a worker reports -------------------------------------------------------------------

    def describe(self) -> dict:
        """What runs: backend, precision, sizes, the checks and why a faster path was not used."""
        return {
            "model": self.net.name, "backend": self.backend, "precision": self.precision,
            "height": self.height, "width": self.width, "device": str(next(self.net.parameters()).device),
            "compiled_batch_sizes": list(self.compiled_batch_sizes),
            "compiling": self._compile_thread is not None and self._compile_thread.is_alive(),
            "compile_error": self.compile_error, "torch_threads": torch.get_num_threads(),
            "checks": [dataclasses.asdict(check) | {"passed": check.passed} for check in self.checks],
        }

    def __repr__(self) -> str:
        return f"StreamStep({self.net.name}, {self.height}x{self.width}, backend={self.backend}, precision={self.precision})"


def _compile_graphs(net: MoViNet, height: int, width: int, precision: str, sizes: tuple[int, ...],
                    prepare: Callable[[State], State], freeze: bool = False) -> tuple[dict[int, StepFn], list[PathCheck]]:
    """One static inductor graph per batch size, each checked against the reference."""
    import torch._dynamo
    import torch._inductor.config

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache_dir()))
    # one cache entry per (model, size, batch): raise dynamo's per-function limit (8 by default)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    graph = FrameGraph(net, height, width, DTYPES[precision], se_matmul=False).eval()
    compiled = torch.compile(graph, fullgraph=True, dynamic=False)
    graphs: dict[int, StepFn] = {}
    checks = []
    for size in sizes:
        started = time.perf_counter()

        def run(frames: Tensor, state: State) -> tuple[Tensor, State]:
            # never compile on the hot path: a call the graph's guards reject (a state in another
            # layout or dtype than prepare_state gives) runs the same graph eagerly instead
            with torch.compiler.set_stance("eager_on_recompile"):
                return compiled(frames, state)

        # cpp_wrapper: the whole graph is one C++ call that releases the GIL. Freezing (weights
        # prepacked for oneDNN) is faster per call but its graphs cannot be cached (oneDNN tensors
        # do not pickle), so every start rebuilds them; without it a restart loads the graph from
        # the FX graph cache in seconds (docs/benchmarks.md).
        with torch._inductor.config.patch(cpp_wrapper=True, freezing=freeze), \
                torch.inference_mode(False), torch.no_grad():
            state = prepare(net.init_state(size, height, width))
            compiled(torch.rand(size, 3, 1, height, width, device=state[next(iter(state))].device), state)
        diff, scale = check_against_reference(run, net, height, width, batch=size, frames=3, prepare=prepare)
        checks.append(PathCheck(f"compiled[batch={size}]", precision, diff, tolerance(precision, scale),
                                round(time.perf_counter() - started, 1)))
        graphs[size] = run
    return graphs, checks


def _eager_paths(net: MoViNet, height: int, width: int, precision: str) -> list[tuple[str, Callable[[], StepFn]]]:
    """The paths that need no compiler, fastest first, as factories (a trace takes seconds)."""
    paths: list[tuple[str, Callable[[], StepFn]]] = [
        ("graph", lambda: FrameGraph(net, height, width, DTYPES[precision]).eval())]
    if precision == "fp32":
        paths.append(("trace", lambda: trace_frame_step(fuse_batchnorm(net), height, width)))
        paths.append(("eager", lambda: net))
    return paths


def for_streaming(net: MoViNet, device: str | torch.device = "cpu", precision: str = "auto",
                  backend: str = "auto", *, height: int | None = None, width: int | None = None,
                  compile: str = "background", batch_sizes: Sequence[int] | None = None,
                  freeze: bool = False) -> StreamStep:
    """The fastest one-frame call of a stream model that agrees with it, as a :class:`StreamStep`.

    ``precision``: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where the CPU has native bf16 and
    the bf16 path passes its check, else fp32). ``backend``: ``"auto"`` or one of
    :data:`BACKENDS`; a path that fails its check gives way to the next with a logged warning.
    ``compile`` (for ``"auto"`` and ``"compiled"``): ``"background"`` serves with the eager graph
    while the compiled graphs build in a thread and switches when they pass; ``"now"`` waits;
    ``"off"`` never compiles; ``batch_sizes``: the static graphs to build (larger batches run in
    chunks of them); ``freeze``: see :meth:`StreamStep.compile`. ``height``/``width`` default to
    the model's input size.
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
        candidates = _eager_paths(net, height, width, chosen)
        if backend not in ("auto", "compiled"):
            candidates = [(name, build) for name, build in candidates if name == backend]
            if not candidates and precision != "auto":
                raise ValueError(f"backend {backend!r} has no {chosen} variant")
        for name, build in candidates:
            started = time.perf_counter()
            step = StreamStep(net, height, width, chosen, name, build(), checks)
            diff, scale = check_against_reference(step, net, height, width)
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
    if backend in ("auto", "compiled") and compile != "off" and device.type == "cpu" and step.backend == "graph":
        step.compile(batch_sizes, background=compile == "background", freeze=freeze)
    return step
