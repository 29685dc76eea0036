"""The one-frame step of a stream model rewritten for inference (:class:`FrameGraph`).

Feature maps are (B, H, W, C) contiguous: channels last, so a 1x1x1 conv is a matmul on the
last dimension (MKL, no layout choices left to a compiler) and a spatial conv runs on the
channels-last view (B, C, H, W) of the same memory. Stream buffers (B, E, T, H, W) are kept in
channels_last_3d, whose memory is (B, T, H, W, E): frame j of the buffer is a (B, H, W, E) slice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .folding import fuse_batchnorm
from .layers import MovinetBlock, ceil_div, get_activation, positional_encoding, tf_same_padding
from .movinet import MoViNet, State
from .specs import ModeSpec

# The oneDNN name of each activation, for the fused ops (conv or matmul with the activation
# applied as the result is written: one pass over the feature map instead of two).
_ONEDNN = {"hard_swish": "hardswish", "swish": "swish"}


# Where the temporal conv runs as one oneDNN depthwise conv3d (else as a weighted sum, a pass per
# tap): measured on the 2-core AMD EPYC (avx512_bf16), docs/benchmarks.md.
TEMPORAL_CONV = {torch.float32: False, torch.bfloat16: True}
# Frame pixels a call (batch x height x width) from which the fused ops run, per dtype. Measured
# (benchmarks/fast_path.py, docs/benchmarks.md): fp32 at 172x172, 8 sessions no faster fused, 16
# and 64 sessions 1.2-1.3x; at 64x64, 32 and 64 sessions no faster, 256 sessions 1.06x (about 14
# sessions at 172x172, 98 at 64x64). bf16 (with the temporal conv) 1.03-1.35x from 8 sessions at 64x64.
FUSE_FROM_PIXELS = {torch.float32: 400_000, torch.bfloat16: 8 * 64 * 64}


def _script_call(name: str, ir: str) -> Callable[..., Tensor]:
    """A TorchScript function built from its IR: how a ``torch.jit.trace`` records a call of
    oneDNN's fused ops, whose ``Scalar?[]`` argument neither the tracer nor TorchScript's
    frontend accepts (the trace keeps the call and runs it without Python, eager calls run it too)."""
    return torch._C._create_function_from_graph(name, torch._C.parse_ir(ir))


_CONV_POINTWISE = """
graph(%x : Tensor, %w : Tensor, %b : Tensor, %padding : int[], %stride : int[], %dilation : int[],
      %groups : int, %attr : str):
  %scalars : Scalar?[] = prim::ListConstruct()
  %algorithm : str = prim::Constant[value=""]()
  %y : Tensor = mkldnn::_convolution_pointwise(%x, %w, %b, %padding, %stride, %dilation, %groups, %attr,
                                               %scalars, %algorithm)
  return (%y)
"""
_LINEAR_POINTWISE = """
graph(%x : Tensor, %w : Tensor, %b : Tensor, %attr : str):
  %scalars : Scalar?[] = prim::ListConstruct()
  %algorithm : str = prim::Constant[value=""]()
  %y : Tensor = mkldnn::_linear_pointwise(%x, %w, %b, %attr, %scalars, %algorithm)
  return (%y)
"""
_fused_calls: dict[str, Callable[..., Tensor]] = {}


def _fused(name: str) -> Callable[..., Tensor]:
    """``conv`` (a conv, its activation as it writes) or ``linear``, built on first use."""
    if name not in _fused_calls:
        _fused_calls[name] = _script_call(f"movinet_{name}_pointwise",
                                          _CONV_POINTWISE if name == "conv" else _LINEAR_POINTWISE)
    return _fused_calls[name]


def can_fuse(device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether the fused oneDNN ops (``torch.ops.mkldnn._*_pointwise``) run here: CPU builds with
    oneDNN, and for bf16 a CPU that oneDNN runs bf16 on (AVX-512 or AVX-NE-CONVERT)."""
    if not (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    return dtype != torch.bfloat16 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _pad(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """``F.pad(x, (left, right, top, bottom))`` with zeros for a channels-last (B, C, H, W) view,
    writing the zeros on the border only (F.pad fills the whole output first, then copies)."""
    left, right, top, bottom = pad
    batch, channels, height, width = x.shape
    out = torch.empty((batch, channels, height + top + bottom, width + left + right), dtype=x.dtype,
                      device=x.device, memory_format=torch.channels_last)
    for size, strip in ((top, out[:, :, :top]), (bottom, out[:, :, top + height:]),
                        (left, out[:, :, :, :left]), (right, out[:, :, :, left + width:])):
        if size:
            strip.zero_()
    out[:, :, top:top + height, left:left + width].copy_(x)
    return out


def _apply(act: str, x: Tensor, inplace: bool = False) -> Tensor:
    """The activations on full feature maps, as single ops (``hard_swish`` is ``F.hardswish``:
    ulp-level from the TF formula, and one kernel instead of four); ``inplace`` on a fresh
    result (no second feature map allocated and written)."""
    if act == "hard_swish":
        return F.hardswish(x, inplace=inplace)
    if act == "swish":
        return F.silu(x, inplace=inplace)
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
        self.in_place = True  # activations in place; FrameGraph(for_compiler=True) turns it off

    def forward(self, x: Tensor, residual: Tensor | None = None, fuse: bool = False) -> Tensor:
        """``fuse``: as oneDNN's fused op, the activation or the residual add applied as it writes."""
        if fuse:
            if residual is not None and self.act == "none":
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
            y = _fused("linear")(x, self.weight, self.bias, _ONEDNN.get(self.act, "none"))
        else:
            y = _apply(self.act, F.linear(x, self.weight, self.bias), self.in_place)
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
        self.in_place = True  # border-only padding, activations in place (off for a compiler)
        (kh, kw), (sh, sw) = conv.kernel_size[1:], self.stride
        top, bottom = tf_same_padding(in_hw[0], kh, sh)
        left, right = tf_same_padding(in_hw[1], kw, sw)
        # symmetric padding goes into the conv; only TF's "extra pixel at the end" needs a pad op
        self.pad = None if (top == bottom and left == right) else (left, right, top, bottom)
        self.padding = (top, left) if self.pad is None else (0, 0)
        self.out_hw = (ceil_div(in_hw[0], sh), ceil_div(in_hw[1], sw))

    def forward(self, x: Tensor, fuse: bool = False) -> Tensor:
        x = x.permute(0, 3, 1, 2)  # (B, C, H, W) channels-last view
        if self.pad is not None:
            x = _pad(x, self.pad) if fuse or self.in_place else F.pad(x, self.pad)  # F.pad: what a compiler fuses
        if fuse:  # oneDNN's conv with the activation applied as it writes
            y = _fused("conv")(x, self.weight, self.bias, list(self.padding), list(self.stride), [1, 1], self.groups,
                               _ONEDNN.get(self.act, "none"))
            return y.permute(0, 2, 3, 1)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)
        return _apply(self.act, y, self.in_place).permute(0, 2, 3, 1)  # (B, H', W', C_out)


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
        sums = F.avg_pool2d(_pad(x.permute(0, 3, 1, 2), self.pad), 3, 2, divisor_override=1)
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
            # the same weights as a depthwise (kt, 1, 1) conv, for the fused path
            self.register_buffer("temporal_kernel", weight.to(dtype)[:, None, :, None, None].contiguous(
                memory_format=torch.channels_last_3d))  # (E, 1, kt, 1, 1)
        self.act = act
        self.temporal_conv = False  # set by FrameGraph: when fusing, the temporal conv as one oneDNN conv
        self.in_place = True
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

    def forward(self, x: Tensor, state: State, new_state: State, fuse: bool = False) -> Tensor:
        if self.skip is None:
            shortcut = x
        else:
            shortcut = self.skip(x if self.skip_pool is None else self.skip_pool(x), fuse=fuse)  # (B, H', W', C_out)
        h = self.spatial(self.expansion(x, fuse=fuse), fuse=fuse)  # (B, H', W', E)
        if self.buffer_frames:
            h = self._temporal(h, state, new_state, fuse and self.temporal_conv)
        h = self._squeeze_excite(h, state, new_state)
        return self.projection(h, residual=shortcut, fuse=fuse)  # (B, H', W', C_out)

    def _temporal(self, h: Tensor, state: State, new_state: State, as_conv: bool) -> Tensor:
        """The causal temporal depthwise conv over the stream buffer and this frame, and the new buffer."""
        key = f"{self.prefix}_stream_buffer"
        buffer = state[key].permute(0, 2, 3, 4, 1)  # (B, kt-1, H', W', E): the memory of channels_last_3d
        if as_conv:
            # the window (buffer + this frame) in one copy, the conv and its activation in one oneDNN
            # call; the new buffer is the window's last kt-1 frames (a view: a state bank copies it
            # into its rows anyway; fed back as it is, StreamStep.prepare_state makes it contiguous)
            window = torch.cat([buffer.to(h.dtype), h[:, None]], dim=1)  # (B, kt, H', W', E)
            y = _fused("conv")(window.permute(0, 4, 1, 2, 3), self.temporal_kernel, self.temporal_bias, [0, 0, 0],
                               [1, 1, 1], [1, 1, 1], self.temporal_kernel.shape[0],
                               _ONEDNN.get(self.act, "none"))  # (B, E, 1, H', W')
            new_state[key] = window[:, 1:].permute(0, 4, 1, 2, 3)  # (B, E, kt-1, H', W'), channels_last_3d strides
            return y[:, :, 0].permute(0, 2, 3, 1)
        # a weighted sum of the buffer's frames and this one (one pass per tap), then the activation
        weight = self.temporal_weight
        t = torch.addcmul(self.temporal_bias, h, weight[self.buffer_frames])
        for j in range(self.buffer_frames):
            t = torch.addcmul(t, buffer[:, j], weight[j])
        new_buffer = torch.cat([buffer[:, 1:], h[:, None].to(buffer.dtype)], dim=1)  # (B, kt-1, H', W', E)
        new_state[key] = new_buffer.permute(0, 4, 1, 2, 3)  # (B, E, kt-1, H', W'), channels_last_3d
        return _apply(self.act, t, self.in_place)

    def _squeeze_excite(self, h: Tensor, state: State, new_state: State) -> Tensor:
        """Squeeze-excitation on [mean of every frame so far, this frame's mean], in float32."""
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
        return h * gate.to(h.dtype)[:, None, None, :]


class FrameGraph(nn.Module):
    """A stream model's one-frame step rewritten for inference, same call as the model:
    ``logits, new_state = graph(frames [B, 3, 1, H, W], state)``, same state names and shapes.

    What differs from :class:`~model.movinet.MoViNet` on one frame: feature maps channels-last
    (1x1x1 convs as matmuls, (1, k, k) convs as 2D convs), BN folded into the convs and ReZero
    into the projections, TF padding fixed for one frame size, the temporal depthwise conv as a
    weighted sum over the stream buffer, the SE's and head's running means in float32, and
    ``dtype`` (float32 or bfloat16) for the weights and feature maps. Stream buffers are returned
    in ``dtype``, in ``channels_last_3d`` (or, from the bf16 temporal conv, a view with its strides
    of a one-frame-longer window); pool buffers stay float32, frame counts int32.
    On a CPU (``fused``) a call of at least ``fuse_from_pixels`` frame pixels runs the convs and
    matmuls as oneDNN's fused ops, the activation or the residual add applied as each result is
    written, and in bf16 the temporal conv as one depthwise conv3d (:data:`TEMPORAL_CONV`; its new
    stream buffer is then a view of the conv's window). Equal to the model within float rounding
    (``tests/model/test_fast_path.py``).
    """

    def __init__(self, net: MoViNet, height: int, width: int, dtype: torch.dtype = torch.float32,
                 se_matmul: bool = True, fused: bool | None = None, for_compiler: bool = False) -> None:
        super().__init__()
        if not net.causal:
            raise ValueError("FrameGraph needs a stream (causal) model")
        device = next(net.parameters()).device
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
        # fused: convs and matmuls with their activation (or the residual add) as oneDNN post-ops;
        # None: where they run (a CPU). Off for a graph that inductor compiles (it fuses by itself).
        self.fused = can_fuse(device, dtype) if fused is None else fused and can_fuse(device, dtype)
        self.fuse_from_pixels = FUSE_FROM_PIXELS[dtype]
        for block in self.blocks:
            block.temporal_conv = TEMPORAL_CONV[dtype]
        # in eager mode and in a trace: pads that zero the border only and activations in place;
        # inductor gets the plain functional forms, which it fuses into its own loops
        for module in self.modules():
            if hasattr(module, "in_place"):
                module.in_place = not for_compiler

    def forward(self, frames: Tensor, state: State) -> tuple[Tensor, State]:
        new_state: State = {}
        x = frames[:, :, 0].permute(0, 2, 3, 1).to(self.dtype).contiguous()  # (B, H, W, 3)
        # oneDNN's fused ops cost more per call than a plain op and its activation (~20 us): they pay
        # from about FUSE_FROM_PIXELS frame pixels a call (docs/benchmarks.md)
        fuse = self.fused and x.shape[0] * self.height * self.width >= self.fuse_from_pixels
        x = self.stem(x, fuse=fuse)  # (B, H/2, W/2, F)
        for block in self.blocks:
            x = block(x, state, new_state, fuse)
        x = self.head(x, fuse=fuse)  # (B, h, w, P)
        spatial = x.mean(dim=(1, 2), dtype=torch.float32)  # (B, P)
        sums = state["state_head_pool_buffer"].flatten(1) + spatial
        seen = state["state_head_pool_frame_count"] + 1
        new_state["state_head_pool_buffer"] = sums[:, :, None, None, None]
        new_state["state_head_pool_frame_count"] = seen
        pooled = (sums / seen.to(torch.float32)[:, None]).to(self.dtype)  # running mean of every frame
        return self.logits(self.hidden(pooled, fuse=fuse), fuse=fuse).float(), new_state
