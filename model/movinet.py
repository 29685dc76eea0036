"""The MoViNet network: one builder for every spec, base and stream, with the state as an argument.

``logits, state = net(video, state)``: ``video`` is float ``[B, 3, T, H, W]`` in ``[0, 1]`` and
``state`` a flat ``dict[str, Tensor]`` named like the official TF states
(``state_block1_layer0_stream_buffer``, ``..._pool_buffer``, ``..._pool_frame_count``,
``..._pos_enc_frame_count``, ``state_head_pool_buffer``, ``state_head_pool_frame_count``), or
``None`` at the start of a stream. Unlike the official code, *every* state tensor has the batch
dimension first, frame counts included, so one forward can serve sessions that are at different
positions in their streams. Base (non-causal) models ignore the state and return ``{}``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import Activation, ClassifierHead, ConvBN, MovinetBlock, ceil_div
from .specs import BackboneSpec, ModelInfo, ModeSpec

State = dict[str, Tensor]


class MoViNet(nn.Module):
    def __init__(
        self,
        backbone: BackboneSpec,
        mode: ModeSpec,
        num_classes: int = 600,
        info: ModelInfo | None = None,
        labels: list[str] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if mode.causal != (mode.conv_type == "2plus1d") or mode.causal != (mode.se_type == "2plus3d"):
            raise ValueError(
                "supported configurations are base (causal=False, conv_type='3d', se_type='3d') and "
                f"stream (causal=True, conv_type='2plus1d', se_type='2plus3d'); got {mode}"
            )
        if labels is not None and len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels given for {num_classes} classes")
        self.backbone_spec = backbone
        self.mode = mode
        self.num_classes = num_classes
        self.info = info
        self.labels = list(labels) if labels is not None else [f"class_{i}" for i in range(num_classes)]
        self.causal = mode.causal
        eps = mode.bn_epsilon

        stem = backbone.stem
        self.stem = ConvBN(3, stem.filters, stem.kernel_size, stem.strides, act=Activation(mode.activation), eps=eps)
        blocks = []
        in_chs = stem.filters
        for stage_index, stage in enumerate(backbone.stages):
            for layer_index, (mid_chs, kernel, stride) in enumerate(
                zip(stage.expand_filters, stage.kernel_sizes, stage.strides)
            ):
                prefix = f"state_block{stage_index}_layer{layer_index}"
                blocks.append(MovinetBlock(in_chs, mid_chs, stage.base_filters, kernel, stride, mode, prefix))
                in_chs = stage.base_filters
        self.blocks = nn.ModuleList(blocks)
        self.head = ConvBN(in_chs, backbone.head.project_filters, act=Activation(mode.activation), eps=eps)
        self.classifier = ClassifierHead(
            backbone.head.project_filters,
            backbone.head.head_filters,
            num_classes,
            mode.classifier_activation,
            mode.dropout,
        )
        self._shape_cache: dict[tuple[int, int], dict[str, tuple[tuple[int, ...], torch.dtype]]] = {}

    # --- state ----------------------------------------------------------------------------------

    def state_shapes(self, height: int, width: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape (without the batch dimension) and dtype of every state tensor at this input size."""
        key = (height, width)
        if key in self._shape_cache:
            return self._shape_cache[key]
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        if self.causal:
            h = ceil_div(height, self.backbone_spec.stem.strides[1])
            w = ceil_div(width, self.backbone_spec.stem.strides[2])
            for block in self.blocks:
                h, w = ceil_div(h, block.stride[1]), ceil_div(w, block.stride[2])
                if block.buffer_frames > 0:
                    shapes[f"{block.prefix}_stream_buffer"] = (
                        (block.mid_chs, block.buffer_frames, h, w),
                        torch.float32,
                    )
                shapes[f"{block.prefix}_pool_buffer"] = ((block.mid_chs, 1, 1, 1), torch.float32)
                shapes[f"{block.prefix}_pool_frame_count"] = ((), torch.int32)
                if self.mode.use_positional_encoding:
                    shapes[f"{block.prefix}_pos_enc_frame_count"] = ((), torch.int32)
            head = self.backbone_spec.head.project_filters
            shapes["state_head_pool_buffer"] = ((head, 1, 1, 1), torch.float32)
            shapes["state_head_pool_frame_count"] = ((), torch.int32)
        self._shape_cache[key] = shapes
        return shapes

    def init_state(self, batch: int, height: int, width: int) -> State:
        """Zero state for ``batch`` new streams of ``height`` x ``width`` frames (``{}`` for base models)."""
        if batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        param = next(self.parameters())
        state = {}
        for name, (shape, dtype) in self.state_shapes(height, width).items():
            dtype = param.dtype if dtype.is_floating_point else dtype
            state[name] = torch.zeros((batch, *shape), dtype=dtype, device=param.device)
        return state

    def check_state(self, state: State, batch: int, height: int, width: int) -> None:
        """Raise ``ValueError`` naming every missing, unexpected or mis-shaped state tensor."""
        expected = self.state_shapes(height, width)
        problems = []
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing:
            problems.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            problems.append(f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
        for name, (shape, _) in expected.items():
            tensor = state.get(name)
            if tensor is not None and tuple(tensor.shape) != (batch, *shape):
                problems.append(f"{name} has shape {tuple(tensor.shape)}, expected {(batch, *shape)}")
        if len(problems) > 8:
            problems = [*problems[:8], f"... and {len(problems) - 8} more"]
        if problems:
            raise ValueError(
                f"state does not fit {self.name} at batch {batch}, {height}x{width}: " + "; ".join(problems)
            )

    @property
    def name(self) -> str:
        return self.info.name if self.info is not None else type(self).__name__

    # --- forward --------------------------------------------------------------------------------

    def check_video(self, video: Tensor) -> None:
        if not isinstance(video, Tensor):
            raise ValueError(f"video must be a torch.Tensor, got {type(video).__name__}")
        if not video.is_floating_point():
            raise ValueError(
                f"video must be floating point in [0, 1], got {video.dtype}; "
                "convert uint8 frames with model.preprocess.preprocess_frames"
            )
        if video.ndim != 5 or video.shape[1] != 3 or video.shape[2] < 1:
            raise ValueError(f"video must have shape [B, 3, T, H, W] with T >= 1, got {list(video.shape)}")

    def forward(self, video: Tensor, state: State | None = None, per_frame: bool = False) -> tuple[Tensor, State]:
        """Return ``(logits, new_state)``; logits ``[B, classes]``, or ``[B, T, classes]`` if ``per_frame``."""
        self.check_video(video)
        batch, _, frames, height, width = video.shape
        if not self.causal:
            if per_frame:
                raise ValueError("per_frame outputs need a causal (stream) model")
            return self._forward_base(video), {}
        if state is None:
            state = self.init_state(batch, height, width)
        else:
            self.check_state(state, batch, height, width)
        new_state: State = {}
        x = self.stem(video)  # (B, F, T, H/2, W/2)
        for block in self.blocks:
            x = block(x, state, new_state)
        x = self.head(x)  # (B, P, T, h, w)
        spatial = x.mean(dim=(3, 4), keepdim=True)  # (B, P, T, 1, 1)
        # The head pool is non-causal within a call but stateful across calls: the mean of every
        # frame seen so far. Per-frame outputs use the running mean up to each frame instead.
        seen = state["state_head_pool_frame_count"]
        sums = torch.cumsum(spatial, dim=2) + state["state_head_pool_buffer"]
        new_state["state_head_pool_buffer"] = sums[:, :, -1:]
        new_state["state_head_pool_frame_count"] = seen + frames
        if per_frame:
            counts = seen[:, None] + torch.arange(1, frames + 1, device=x.device)  # (B, T)
            pooled = sums / counts.to(x.dtype)[:, None, :, None, None]
            logits = self.classifier(pooled)  # (B, K, T, 1, 1)
            return logits[..., 0, 0].transpose(1, 2), new_state
        pooled = sums[:, :, -1:] / (seen + frames).to(x.dtype)[:, None, None, None, None]
        return self.classifier(pooled).flatten(1), new_state

    def _forward_base(self, video: Tensor) -> Tensor:
        x = self.stem(video)
        empty: State = {}
        for block in self.blocks:
            x = block(x, empty, empty)
        x = self.head(x)
        pooled = x.mean(dim=(2, 3, 4), keepdim=True)  # (B, P, 1, 1, 1)
        return self.classifier(pooled).flatten(1)

    def extra_repr(self) -> str:
        mode = "stream" if self.causal else "base"
        return f"name={self.name}, mode={mode}, num_classes={self.num_classes}"
