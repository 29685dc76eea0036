"""The building blocks of MoViNet, written to match the official TensorFlow layers bit for bit.

Tensors are channels-first, ``[B, C, T, H, W]``. The official code is channels-last; the converter
(:mod:`model.convert`) permutes kernels, and the state helpers keep our layout.

Three traps of the official code live here and nowhere else:

* TF "SAME" padding puts the extra pixel at the *end* (bottom/right) when the padding is odd;
  it is computed from the input size at run time, never hard-coded.
* The skip branch's 3x3 average pool excludes padded pixels from the divisor.
* Stream (causal) layers take their past from explicit state tensors, so a call on ``T`` frames
  equals ``T`` calls on one frame each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .specs import ModeSpec, Triple

# --- activations ---------------------------------------------------------------------------------


def hard_swish(x: Tensor) -> Tensor:
    # TF multiplies by the float 1/6 (PyTorch's F.hardswish divides by 6: ulp-level difference).
    return x * F.relu6(x + 3.0) * (1.0 / 6.0)


def hard_sigmoid_keras2(x: Tensor) -> Tensor:
    """``clip(0.2x + 0.5, 0, 1)``: the gate the released stream checkpoints were trained with."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def hard_sigmoid_model_garden(x: Tensor) -> Tensor:
    """``relu6(x + 3) * 0.16667``, exactly as today's Model Garden ``sigmoid.py`` writes it."""
    return F.relu6(x + 3.0) * 0.16667


def hard_sigmoid_torch(x: Tensor) -> Tensor:
    return F.relu6(x + 3.0) / 6.0


_HARD_SIGMOIDS = {
    "keras2": hard_sigmoid_keras2,
    "model_garden": hard_sigmoid_model_garden,
    "torch": hard_sigmoid_torch,
}


def get_activation(name: str, hard_sigmoid: str = "keras2"):
    if name == "swish":
        return F.silu
    if name == "hard_swish":
        return hard_swish
    if name == "sigmoid":
        return torch.sigmoid
    if name == "hard_sigmoid":
        return _HARD_SIGMOIDS[hard_sigmoid]
    raise ValueError(f"unknown activation {name!r}")


class Activation(nn.Module):
    """A named activation as a module, so that ``print(model)`` says which one runs."""

    def __init__(self, name: str, hard_sigmoid: str = "keras2") -> None:
        super().__init__()
        self.name = name if name != "hard_sigmoid" else f"hard_sigmoid[{hard_sigmoid}]"
        self.fn = get_activation(name, hard_sigmoid)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


# --- padding -------------------------------------------------------------------------------------


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding for one dimension: ``(before, after)``, the extra pixel after."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def spatial_same_pad(x: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    """Pad H and W of ``x`` (``[B, C, T, H, W]``) like TF SAME; T is left alone."""
    top, bottom = tf_same_padding(x.shape[-2], kernel[1], stride[1])
    left, right = tf_same_padding(x.shape[-1], kernel[2], stride[2])
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom))


def same_pad_3d(x: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    """Pad T, H and W of ``x`` like TF SAME (base models: symmetric in time, they see the future)."""
    front, back = tf_same_padding(x.shape[2], kernel[0], stride[0])
    top, bottom = tf_same_padding(x.shape[3], kernel[1], stride[1])
    left, right = tf_same_padding(x.shape[4], kernel[2], stride[2])
    if front == back == top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom, front, back))


def tf_avg_pool_3x3_s2(x: Tensor) -> Tensor:
    """``AveragePooling(pool=(1,3,3), strides=(1,2,2), padding='same')`` with TF's divisor.

    TF divides by the number of *valid* pixels under the window, and pads at the end for even
    sizes, which ``F.avg_pool3d(count_include_pad=False)`` cannot express with asymmetric pads.
    """
    padded = spatial_same_pad(x, (1, 3, 3), (1, 2, 2))
    sums = F.avg_pool3d(padded, (1, 3, 3), (1, 2, 2), divisor_override=1)
    ones = spatial_same_pad(torch.ones_like(x[:1, :1, :1]), (1, 3, 3), (1, 2, 2))
    counts = F.avg_pool3d(ones, (1, 3, 3), (1, 2, 2), divisor_override=1)
    return sums / counts


# --- conv blocks ---------------------------------------------------------------------------------


def conv_frames(conv: nn.Conv3d, x: Tensor) -> Tensor:
    """``conv(x)`` for an already padded ``x``; one-frame inputs of ``(1, kh, kw)`` kernels run as
    2D convolutions, which PyTorch's CPU kernels do several times faster than ``conv3d`` (the
    streaming hot path is exactly this case)."""
    if x.shape[2] == 1 and conv.kernel_size[0] == 1:
        out = F.conv2d(x[:, :, 0], conv.weight[:, :, 0], conv.bias, conv.stride[1:], 0, 1, conv.groups)
        return out[:, :, None]
    return conv(x)


def batch_norm(channels: int, eps: float) -> nn.BatchNorm3d:
    # Keras momentum 0.99 is PyTorch momentum 0.01; epsilon 1e-3 (not PyTorch's 1e-5).
    return nn.BatchNorm3d(channels, eps=eps, momentum=0.01)


class ConvBN(nn.Module):
    """``conv -> BN -> activation`` with TF SAME padding, as the official ``ConvBlock`` (3D)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        depthwise: bool = False,
        act: nn.Module | None = None,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv = nn.Conv3d(
            in_chs, out_chs, self.kernel, self.stride, groups=in_chs if depthwise else 1, bias=False
        )
        self.bn = batch_norm(out_chs, eps)
        self.act = act if act is not None else nn.Identity()
        self._pointwise = self.kernel == (1, 1, 1) and self.stride == (1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if not self._pointwise:
            x = same_pad_3d(x, self.kernel, self.stride)
        return self.act(self.bn(conv_frames(self.conv, x)))


class StreamFeatureConv(nn.Module):
    """The (2+1)D depthwise "feature" conv of stream models, with its causal stream buffer.

    spatial depthwise ``(1, kh, kw)`` -> BN -> act -> [buffer] -> temporal depthwise ``(kt, 1, 1)``
    -> BN_temporal -> act. The buffer holds the last ``kt - 1`` *spatially downsampled*
    activations (it sits after the spatial conv, as in the official code).
    """

    def __init__(self, chs: int, kernel: Triple, stride: Triple, act: nn.Module, eps: float) -> None:
        super().__init__()
        kt, kh, kw = kernel
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.buffer_frames = kt - 1
        self.conv = nn.Conv3d(chs, chs, (1, kh, kw), stride, groups=chs, bias=False)
        self.bn = batch_norm(chs, eps)
        self.act = act
        if kt > 1:
            self.conv_temporal = nn.Conv3d(chs, chs, (kt, 1, 1), groups=chs, bias=False)
            self.bn_temporal = batch_norm(chs, eps)

    def forward(self, x: Tensor, buffer: Tensor | None) -> tuple[Tensor, Tensor | None]:
        x = spatial_same_pad(x, self.kernel, self.stride)
        x = self.act(self.bn(conv_frames(self.conv, x)))  # (B, E, T, H', W')
        if self.buffer_frames == 0:
            return x, None
        full = torch.cat([buffer, x], dim=2)  # (B, E, kt-1+T, H', W')
        new_buffer = full[:, :, -self.buffer_frames :]
        if x.shape[2] == 1 and not torch.is_grad_enabled():
            # one output frame: the depthwise temporal conv is a weighted sum of kt frames, which
            # beats conv3d's CPU kernel by far at these shapes
            weight = self.conv_temporal.weight.view(1, -1, self.buffer_frames + 1, 1, 1)
            x = (full * weight).sum(dim=2, keepdim=True)
            if self.conv_temporal.bias is not None:
                x = x + self.conv_temporal.bias.view(1, -1, 1, 1, 1)
        else:
            x = self.conv_temporal(full)
        x = self.act(self.bn_temporal(x))  # (B, E, T, H', W')
        return x, new_buffer


class SqueezeExcitation(nn.Module):
    """The official ``StreamSqueezeExcitation`` for ``se_type`` ``'3d'`` (base) and ``'2plus3d'`` (stream).

    Base pools the whole clip into one gate. Stream builds a per-frame gate from the concatenation
    ``[cumulative mean over frames so far, this frame's spatial mean]`` (2E channels), optionally
    plus a sinusoidal positional encoding of the global frame index (A3-A5 stream).
    """

    def __init__(self, chs: int, mode: ModeSpec) -> None:
        super().__init__()
        self.causal = mode.causal
        in_chs = chs * 2 if mode.causal else chs
        hidden = _se_hidden(chs, mode)
        self.reduce = nn.Conv3d(in_chs, hidden, 1, bias=True)
        self.expand = nn.Conv3d(hidden, chs, 1, bias=True)
        self.act = Activation(mode.activation)
        self.gate = Activation(mode.gating_activation, mode.hard_sigmoid)
        self.use_positional_encoding = mode.use_positional_encoding
        if self.use_positional_encoding:
            self.pos_scale = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, state: dict[str, Tensor], prefix: str, new_state: dict[str, Tensor]) -> Tensor:
        if not self.causal:
            pooled = x.mean(dim=(2, 3, 4), keepdim=True)  # (B, E, 1, 1, 1)
        else:
            frames = x.shape[2]
            spatial = x.mean(dim=(3, 4), keepdim=True)  # (B, E, T, 1, 1)
            sums = torch.cumsum(spatial, dim=2) + state[f"{prefix}_pool_buffer"]
            new_state[f"{prefix}_pool_buffer"] = sums[:, :, -1:]
            seen = state[f"{prefix}_pool_frame_count"]  # (B,)
            new_state[f"{prefix}_pool_frame_count"] = seen + frames
            counts = seen[:, None] + torch.arange(1, frames + 1, device=x.device)  # (B, T)
            cumulative = sums / counts.to(x.dtype)[:, None, :, None, None]
            pooled = torch.cat([cumulative, spatial], dim=1)  # (B, 2E, T, 1, 1)
            if self.use_positional_encoding:
                seen_pe = state[f"{prefix}_pos_enc_frame_count"]
                new_state[f"{prefix}_pos_enc_frame_count"] = seen_pe + frames
                positions = seen_pe[:, None] + torch.arange(frames, device=x.device)  # (B, T)
                encoding = positional_encoding(positions, pooled.shape[1], pooled.dtype)  # (B, 2E, T)
                pooled = pooled + self.pos_scale * encoding[..., None, None]
        gate = self.gate(self.expand(self.act(self.reduce(pooled))))
        return x * gate


def _se_hidden(chs: int, mode: ModeSpec) -> int:
    from .specs import make_divisible

    return make_divisible(mode.se_ratio * chs * (2 if mode.se_type == "2plus3d" else 1), 8)


def positional_encoding(positions: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """The official sinusoidal encoding: sin of the even-index angles, then cos of the odd ones.

    ``positions`` is ``(B, T)`` integer frame indices; returns ``(B, channels, T)``. The two halves
    are concatenated, not interleaved (as in ``nn_layers.PositionalEncoding``).
    """
    index = torch.arange(channels, device=positions.device, dtype=torch.float32)
    angles = 1.0 / torch.pow(10000.0, 2.0 * torch.div(index, 2, rounding_mode="floor") / channels)
    radians = positions.to(torch.float32)[..., None] * angles  # (B, T, C)
    encoding = torch.cat([torch.sin(radians[..., 0::2]), torch.cos(radians[..., 1::2])], dim=-1)
    return encoding.permute(0, 2, 1).to(dtype)


class Skip(nn.Module):
    """The skip branch of a block that changes width or resolution: [avg pool] -> 1x1x1 conv -> BN."""

    def __init__(self, in_chs: int, out_chs: int, pool: bool, eps: float) -> None:
        super().__init__()
        self.pool = pool
        self.conv = nn.Conv3d(in_chs, out_chs, 1, bias=False)
        self.bn = batch_norm(out_chs, eps)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            x = tf_avg_pool_3x3_s2(x)
        return self.bn(conv_frames(self.conv, x))


class MovinetBlock(nn.Module):
    """One inverted bottleneck: expansion -> depthwise feature conv -> SE -> projection -> rezero -> + skip."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        kernel: Triple,
        stride: Triple,
        mode: ModeSpec,
        prefix: str,
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self.causal = mode.causal
        eps = mode.bn_epsilon
        act = Activation(mode.activation)
        self.expansion = ConvBN(in_chs, mid_chs, act=act, eps=eps)
        if mode.causal:
            self.feature = StreamFeatureConv(mid_chs, kernel, stride, act, eps)
        else:
            self.feature = ConvBN(mid_chs, mid_chs, kernel, stride, depthwise=True, act=act, eps=eps)
        self.se = SqueezeExcitation(mid_chs, mode)
        self.projection = ConvBN(mid_chs, out_chs, eps=eps)
        downsample = any(s > 1 for s in stride)
        self.skip = Skip(in_chs, out_chs, downsample, eps) if (in_chs != out_chs or downsample) else None
        # ReZero: a learned scalar on the residual branch (initialised to 0 as in TF).
        self.rezero = nn.Parameter(torch.zeros(()))
        self.buffer_frames = kernel[0] - 1 if mode.causal else 0
        self.mid_chs = mid_chs
        self.stride = tuple(stride)

    def forward(self, x: Tensor, state: dict[str, Tensor], new_state: dict[str, Tensor]) -> Tensor:
        shortcut = x if self.skip is None else self.skip(x)
        h = self.expansion(x)  # (B, E, T, H, W)
        if self.causal:
            key = f"{self.prefix}_stream_buffer"
            h, buffer = self.feature(h, state.get(key))  # (B, E, T, H', W')
            if buffer is not None:
                new_state[key] = buffer
        else:
            h = self.feature(h)
        h = self.se(h, state, self.prefix, new_state)
        h = self.projection(h)  # (B, C_out, T, H', W')
        return shortcut + self.rezero * h


class ClassifierHead(nn.Module):
    """``1x1x1 conv (bias) -> activation -> dropout -> 1x1x1 conv (bias)`` on pooled features."""

    def __init__(self, in_chs: int, hidden: int, num_classes: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Conv3d(in_chs, hidden, 1, bias=True)
        self.act = Activation(activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.logits = nn.Conv3d(hidden, num_classes, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.dropout(self.act(self.hidden(x))))


def ceil_div(size: int, stride: int) -> int:
    return int(math.ceil(size / stride))
