"""Inference-time speed-ups that keep the numbers: BN folding, memory layout, compilation.

``optimize_for_inference(net)`` returns a copy of ``net`` whose BatchNorms are folded into the
convolutions before them (exact up to float rounding). ``channels_last=True`` stores weights in
``channels_last_3d`` (the input should then be converted too); ``compile=True`` wraps the forward
in ``torch.compile``. ``benchmarks/model_speed.py`` measures which of these wins on a machine.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from .layers import ConvBN, Skip, StreamFeatureConv
from .movinet import MoViNet


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
        if isinstance(module, (ConvBN, Skip, StreamFeatureConv)):
            module.conv = fold_bn_into_conv(module.conv, module.bn)
            module.bn = nn.Identity()
        if isinstance(module, StreamFeatureConv) and module.buffer_frames > 0:
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
    and decoder threads keep running while a forward is under way.
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
        video = torch.rand(2, 3, 1, height, width, device=device)
        state = {k: v.clone() for k, v in state.items()}
        traced = torch.jit.trace(net, (video, state), strict=False, check_trace=False)
    return traced
