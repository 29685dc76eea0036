"""BatchNorm folded into the convolution before it: same outputs to float rounding, fewer ops."""

from __future__ import annotations

import copy

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
        if isinstance(module, (ConvBN, Skip, StreamFeatureConv)) and not isinstance(module.bn, nn.Identity):
            module.conv = fold_bn_into_conv(module.conv, module.bn)
            module.bn = nn.Identity()
        if isinstance(module, StreamFeatureConv) and module.buffer_frames > 0 \
                and not isinstance(module.bn_temporal, nn.Identity):
            module.conv_temporal = fold_bn_into_conv(module.conv_temporal, module.bn_temporal)
            module.bn_temporal = nn.Identity()
    return fused
