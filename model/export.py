"""Export MoViNet to ONNX: the stream model as a one-frame step with its state as named inputs and
outputs, the base model as a clip classifier. Owns the graph's names, its metadata and the CLI.

    python -m model.export onnx --model movinet_a0_stream --weights motion --out a0.onnx

Stream graph (``movinet_*_stream``), one call per frame:

* inputs: ``frames`` float ``[B, 3, 1, H, W]`` in ``[0, 1]``, then one input per state tensor named
  as in our state dict (``state_block1_layer0_stream_buffer``, ``..._pool_frame_count`` ...);
* outputs: ``logits`` ``[B, classes]`` (the running mean over every frame since the start of the
  stream, as the official stream model), then ``new_<state name>`` for each state input.

Every input and output has a dynamic batch axis ``batch``; the frame counts are ``[B]`` int32, so
one run serves sessions at different positions in their streams. A new stream starts from zeros
(the shapes and dtypes are the graph's inputs). Base graph (``movinet_*_base``): ``frames``
``[B, 3, T, H, W]`` with dynamic ``batch`` and ``T``, ``logits`` ``[B, classes]``. H and W are fixed
at export (``--size``, default the model's input size). ``metadata_props`` carry the labels
(JSON), the input size, frame rate, clip frames, model name and state names (:func:`onnx_metadata`).

Which exporter. Both of torch 2.13's exporters give a graph equal to PyTorch at every batch size
(measured: 3e-8 on A0 at batch 3 when exported at batch 2): the TorchScript tracer
(``dynamo=False``, deprecated since 2.9 but present) and ``torch.export`` (``dynamo=True``). The
default is TorchScript because the dynamo one needs ``onnxscript`` and ``onnx_ir`` on top of
``onnx`` (not our dependencies) and is ~6x slower (A0: 39 s against 6 s); ``--exporter dynamo``
is there for when the TorchScript one goes. Either way the export traces a *one-frame* call under
``torch.no_grad()``: the layers take their one-frame fast paths (``conv2d`` for ``(1, k, k)``
kernels, a weighted sum for the temporal depthwise conv), which are decided from static shapes,
so the graph holds only those, and nothing in it depends on the batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

import model

FORMAT = "movinet-onnx"
FORMAT_VERSION = "1"
FRAMES_INPUT = "frames"
LOGITS_OUTPUT = "logits"
STATE_OUTPUT_PREFIX = "new_"
BATCH_AXIS = "batch"
TIME_AXIS = "time"
DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")


def state_output_name(state_name: str) -> str:
    """The output that carries the next value of state input ``state_name``."""
    return STATE_OUTPUT_PREFIX + state_name


class StreamStep(nn.Module):
    """``(frames, *state tensors) -> (logits, *new state tensors)``: the state dict as positional tensors."""

    def __init__(self, net: model.MoViNet, state_names: list[str]) -> None:
        super().__init__()
        self.net = net
        self.state_names = list(state_names)

    def forward(self, frames: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        logits, new_state = self.net(frames, dict(zip(self.state_names, state)))
        return (logits, *(new_state[name] for name in self.state_names))


class ClipForward(nn.Module):
    """``frames [B, 3, T, H, W] -> logits [B, classes]`` for base models (no state)."""

    def __init__(self, net: model.MoViNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, frames: Tensor) -> Tensor:
        return self.net(frames)[0]


def parse_size(text: str) -> tuple[int, int]:
    """``"172"`` or ``"160x224"`` (height x width) -> ``(height, width)``."""
    parts = text.lower().split("x")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"size must be N or HxW, got {text!r}") from None
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ValueError(f"size must be N or HxW with positive numbers, got {text!r}")
    return sizes[0], sizes[1]


def default_size(net: model.MoViNet) -> tuple[int, int]:
    if net.info is None:
        raise ValueError("the model has no ModelInfo; give the size explicitly")
    return net.info.input_size, net.info.input_size


def onnx_metadata(net: model.MoViNet, height: int, width: int, state_names: list[str]) -> dict[str, str]:
    """The ``metadata_props`` of an export: strings, JSON where the value is not a plain string."""
    info = net.info
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": net.name,
        "mode": "stream" if net.causal else "base",
        "labels": json.dumps(net.labels),
        "num_classes": str(net.num_classes),
        "input_size": json.dumps([height, width]),
        "frame_rate": json.dumps(info.frame_rate if info else None),
        "clip_frames": json.dumps(info.clip_frames if info else None),
        "hard_sigmoid": net.mode.hard_sigmoid,
        "frames_input": FRAMES_INPUT,
        "logits_output": LOGITS_OUTPUT,
        "state_names": json.dumps(state_names),
        "state_output_prefix": STATE_OUTPUT_PREFIX,
        "torch_version": torch.__version__,
    }


def export_onnx(
    net: model.MoViNet,
    path: str | Path,
    *,
    size: tuple[int, int] | None = None,
    exporter: str = "torchscript",
    opset: int = DEFAULT_OPSET,
    clip_frames: int = 8,
) -> Path:
    """Write ``net`` to ``path`` as ONNX (the module docstring has the graph's names and axes).

    ``size`` is ``(height, width)``, by default the model's input size; ``clip_frames`` is the
    example clip length traced for base models (the time axis stays dynamic).
    """
    import onnx  # imported here: the model package itself does not need it

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {EXPORTERS}")
    height, width = size or default_size(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(net.parameters())
    # Batch 2, not 1: a tracer could take a size-1 dimension for a broadcast and bake it in.
    example_batch = 2
    if net.causal:
        state = net.init_state(example_batch, height, width)
        state_names = list(state)
        wrapper: nn.Module = StreamStep(net, state_names)
        frames = torch.rand(example_batch, 3, 1, height, width, dtype=param.dtype, device=param.device)
        args: tuple[Tensor, ...] = (frames, *state.values())
        input_names = [FRAMES_INPUT, *state_names]
        output_names = [LOGITS_OUTPUT, *(state_output_name(name) for name in state_names)]
        dynamic_axes = {name: {0: BATCH_AXIS} for name in input_names + output_names}
    else:
        state_names = []
        wrapper = ClipForward(net)
        args = (torch.rand(example_batch, 3, clip_frames, height, width, dtype=param.dtype, device=param.device),)
        input_names, output_names = [FRAMES_INPUT], [LOGITS_OUTPUT]
        dynamic_axes = {FRAMES_INPUT: {0: BATCH_AXIS, 2: TIME_AXIS}, LOGITS_OUTPUT: {0: BATCH_AXIS}}

    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer warns on every shape-dependent Python branch; those branches (one-frame
            # fast paths, TF SAME padding from H and W) are meant to be fixed in the graph.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            if exporter == "torchscript":
                torch.onnx.export(
                    wrapper, args, str(path), input_names=input_names, output_names=output_names,
                    dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                )
            else:
                _export_dynamo(wrapper, args, path, input_names, output_names, dynamic_axes, opset, net.causal)
    finally:
        net.train(was_training)

    proto = onnx.load(str(path))
    proto.doc_string = f"{net.name} exported by model.export ({'one-frame stream step' if net.causal else 'clip'})"
    del proto.metadata_props[:]
    for key, value in onnx_metadata(net, height, width, state_names).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _export_dynamo(wrapper, args, path, input_names, output_names, dynamic_axes, opset, causal) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's translator)
    except ImportError:
        raise ValueError("the dynamo exporter needs onnxscript: pip install onnxscript") from None
    from torch.export import Dim

    batch = Dim(BATCH_AXIS, min=1)
    if causal:
        dynamic_shapes = {"frames": {0: batch}, "state": tuple({0: batch} for _ in args[1:])}
    else:
        # min=2: a one-frame clip would take the fast paths' branch, so torch.export splits there
        dynamic_shapes = {"frames": {0: batch, 2: Dim(TIME_AXIS, min=2)}}
    torch.onnx.export(
        wrapper, args, str(path), input_names=input_names, output_names=output_names,
        dynamic_shapes=dynamic_shapes, opset_version=max(opset, 18), dynamo=True,
        external_data=False, verbose=False,
    )


def check_onnx(path: str | Path, net: model.MoViNet, *, batch: int = 3, frames: int = 6, seed: int = 0) -> float:
    """Largest ``|logits|`` difference between onnxruntime (CPU) and ``net`` on random input.

    Stream: ``frames`` one-frame steps at ``batch``, the state fed back. Base: one clip.
    """
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    height, width = json.loads(meta["input_size"])
    generator = torch.Generator().manual_seed(seed)
    param = next(net.parameters())
    video = torch.rand(batch, 3, frames, height, width, generator=generator)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            if not net.causal:
                want = net(video.to(param))[0].float().cpu().numpy()
                got = session.run([LOGITS_OUTPUT], {FRAMES_INPUT: video.numpy()})[0]
                return float(np.abs(got - want).max())
            names = json.loads(meta["state_names"])
            state = {name: value.cpu().numpy() for name, value in net.init_state(batch, height, width).items()}
            torch_state = None
            worst = 0.0
            for t in range(frames):
                frame = video[:, :, t : t + 1]
                want, torch_state = net(frame.to(param), torch_state)
                outputs = session.run(None, {FRAMES_INPUT: frame.numpy(), **state})
                worst = max(worst, float(np.abs(outputs[0] - want.float().cpu().numpy()).max()))
                by_name = dict(zip([o.name for o in session.get_outputs()], outputs))
                state = {name: by_name[state_output_name(name)] for name in names}
            return worst
    finally:
        net.train(was_training)


# --- running an export -------------------------------------------------------------------------


class OnnxStreamStep:
    """An exported stream model as a one-frame callable, like the PyTorch model's:
    ``logits, state = step(frames [B,3,1,H,W], state)`` with torch tensors in and out, any ``B``
    (sessions at different stream positions). onnxruntime releases the GIL while it runs.
    """

    def __init__(self, path: str | Path, *, threads: int = 0, providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.state_names: list[str] = json.loads(meta["state_names"])
        self.outputs = [LOGITS_OUTPUT] + [state_output_name(name) for name in self.state_names]

    def __call__(self, frames: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        feed = {FRAMES_INPUT: frames.detach().cpu().float().numpy()}
        feed.update({name: state[name].detach().cpu().numpy() for name in self.state_names})
        logits, *new = self.session.run(self.outputs, feed)
        return torch.from_numpy(logits), {n: torch.from_numpy(v) for n, v in zip(self.state_names, new, strict=True)}


def onnx_stream_step(net: model.MoViNet, size: tuple[int, int], directory: str | Path, *, threads: int = 0,
                     tolerance: float = 1e-4) -> OnnxStreamStep:
    """Export ``net`` (a stream model) to ``directory`` and load it with onnxruntime, checked equal
    to ``net`` at load: a larger difference than ``tolerance`` on the logits raises ``ValueError``."""
    path = Path(directory) / f"{net.info.name if net.info else 'stream'}_{size[0]}x{size[1]}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(net, path, size=size)
    worst = check_onnx(path, net, batch=2, frames=4)
    if worst > tolerance:
        raise ValueError(f"the onnxruntime graph differs from the model by {worst:.2e} (> {tolerance:g})")
    return OnnxStreamStep(path, threads=threads)


# --- command line --------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[model.export] {message}", file=sys.stderr, flush=True)


def _onnx_command(args: argparse.Namespace) -> None:
    if args.model not in model.list_models():
        raise ValueError(f"unknown model {args.model!r}; known models: {', '.join(model.list_models())}")
    weights = None if args.weights.lower() == "none" else args.weights
    _log(f"building {args.model} ({'random weights' if weights is None else f'weights {weights}'})")
    net = model.create_model(args.model, weights=weights, num_classes=args.num_classes)
    size = parse_size(args.size) if args.size else default_size(net)
    kind = "a one-frame stream step" if net.causal else "the clip model (dynamic batch and time)"
    _log(f"exporting {kind} at {size[0]}x{size[1]} with the {args.exporter} exporter, opset {args.opset}")
    started = time.perf_counter()
    path = export_onnx(net, args.out, size=size, exporter=args.exporter, opset=args.opset)
    state_count = len(net.init_state(1, *size)) if net.causal else 0
    _log(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - started:.1f} s: "
        f"inputs {FRAMES_INPUT} + {state_count} state tensors, outputs {LOGITS_OUTPUT} + {state_count} "
        f"'{STATE_OUTPUT_PREFIX}<state name>'; {net.num_classes} classes"
    )
    if args.check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            _log("onnxruntime is not installed: skipping the check against PyTorch")
        else:
            worst = check_onnx(path, net)
            what = "6 frames at batch 3" if net.causal else "a 6-frame clip at batch 3"
            verdict = "ok" if worst < 1e-3 else "MISMATCH"
            _log(f"onnxruntime vs PyTorch on {what}: max |logits difference| {worst:.2e} ({verdict})")
            if worst >= 1e-3:
                raise ValueError(f"the exported graph differs from PyTorch by {worst:.2e}")
    print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m model.export", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    onnx_parser = commands.add_parser("onnx", help="export a model to ONNX (docs/onnx.md)")
    onnx_parser.add_argument("--model", required=True, help="e.g. movinet_a0_stream or movinet_a2_base")
    onnx_parser.add_argument(
        "--weights", default="none", help="none (random), a tag (motion, kinetics600) or a .safetensors path"
    )
    onnx_parser.add_argument("--out", required=True, help="the .onnx file to write")
    onnx_parser.add_argument("--size", help="N or HxW (default: the model's input size)")
    onnx_parser.add_argument("--num-classes", type=int, default=600, help="classes of a random model")
    onnx_parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript")
    onnx_parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    onnx_parser.add_argument(
        "--no-check", dest="check", action="store_false", help="skip the onnxruntime-vs-PyTorch check"
    )
    onnx_parser.set_defaults(handler=_onnx_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"error: {error} (pip install onnx onnxruntime)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
