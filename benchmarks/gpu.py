"""Stream-model throughput on one GPU: a prepared run for one NVIDIA H100/H200, under 8 minutes.

    PYTHONPATH=. python benchmarks/gpu.py --out runs/gpu.json        # the GPU machine (no registry needed)
    PYTHONPATH=. python benchmarks/gpu.py --device cpu --quick       # anywhere: the same code, small batches

Prints markdown tables (and writes them as JSON to ``--out``):

1. **stream**: A0 (172x172) and A2 (224x224) stream, one frame per session per step, at batch
   1, 64, 256, 1024 and 4096, fp32 (TF32 off) and bf16 autocast, eager and as one CUDA graph per
   batch size: frames/s and p50/p99 step time. A step is what a server does: one H2D copy of the
   batch's uint8 frames from a pinned host buffer, uint8 -> float on the device, the forward with
   the state resident on the device, one D2H copy of the logits into pinned memory, synchronise.
   The memory layout (channels-last or not) is chosen per model and precision by a short probe;
   BN is folded into the convolutions (``model.optimize``) when that is available.
2. **memory** (in the same rows): state bytes per session, and the measured
   ``torch.cuda.max_memory_allocated`` delta over the weights, per batch row.
3. **agreement**: fp32 against bf16 on a real video (``tests/assets/motion_test.mp4`` when PyAV
   is there, else a generated one): top-1 agreement over every (session, frame) and the largest
   probability difference; trained weights when they are on the machine, else random ones.
4. **onnxruntime**: the ONNX export (``model.export``) with the CUDA execution provider when
   there is one (state kept on the device through IO binding), else the CPU one.

Every section has its share of ``--budget-s`` (default 420 s, so the whole run stays under 8
minutes with start-up and one configuration running over); a configuration that would not fit is listed as skipped, and one that
runs out of memory as ``oom`` (the larger batches of that configuration are then skipped).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import model

ROOT = Path(__file__).resolve().parents[1]
TEST_VIDEO = ROOT / "tests" / "assets" / "motion_test.mp4"
FULL_BATCHES = (1, 64, 256, 1024, 4096)
QUICK_BATCHES = (1, 2)
SECTION_SHARES = {"stream": 0.62, "agreement": 0.1, "onnxruntime": 0.28}


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


# --- 1 and 2: the stream step --------------------------------------------------------------------


@dataclass
class StreamRow:
    model: str
    size: int
    batch: int
    precision: str
    layout: str
    graph: bool
    status: str = "ok"
    frames_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    steps: int = 0
    state_mb_per_session: float | None = None
    measured_mb_per_row: float | None = None


class StreamStep:
    """One server step for ``batch`` sessions: H2D frames, forward (state on the device), D2H logits."""

    def __init__(self, net, device: Device, batch: int, size: int, precision: str, channels_last: bool, graph: bool):
        self.net, self.device, self.precision = net, device, precision
        self.channels_last = channels_last
        # the conv weights follow the input's layout (the one-frame path slices them to 4D as it is)
        net.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
        pin = device.cuda
        # decoded RGB frames land in this pinned buffer; the step copies it to the device once
        frame = torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8)
        self.host_frames = torch.empty((batch, size, size, 3), dtype=torch.uint8, pin_memory=pin)
        self.host_frames.copy_(frame.expand(batch, -1, -1, -1))
        self.device_frames = torch.empty_like(self.host_frames, device=device.name)
        self.state = net.init_state(batch, size, size)
        self.host_logits = torch.empty(batch, net.num_classes, pin_memory=pin)
        self.graph = None
        if graph:
            self._capture()

    def _forward(self):
        video = self.device_frames.permute(0, 3, 1, 2)[:, :, None].float().div_(255)  # (B, 3, 1, H, W)
        # NHWC uint8 permuted is already channels_last_3d; contiguous() makes it NCTHW
        video = video.contiguous(memory_format=torch.channels_last_3d if self.channels_last else torch.contiguous_format)
        with torch.no_grad(), self.device.autocast(self.precision):
            return self.net(video, self.state)

    def _capture(self) -> None:
        # Warm up on a side stream (cuDNN picks its algorithms there), then capture the forward and
        # the state update (the new state copied into the static one) as one graph.
        self.device_frames.copy_(self.host_frames)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                _, new_state = self._forward()
                for name, value in new_state.items():
                    self.state[name].copy_(value)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_logits, new_state = self._forward()
            for name, value in new_state.items():
                self.state[name].copy_(value)
        for value in self.state.values():
            value.zero_()

    def __call__(self) -> None:
        self.device_frames.copy_(self.host_frames, non_blocking=True)
        if self.graph is not None:
            self.graph.replay()
            logits = self.static_logits
        else:
            logits, self.state = self._forward()
        self.host_logits.copy_(logits, non_blocking=True)


def stream_config(net, device: Device, row: StreamRow, seconds: float, quick: bool) -> None:
    device.free()
    base = 0
    if device.cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    step = StreamStep(net, device, row.batch, row.size, row.precision, row.layout == "channels_last", row.graph)
    samples = measure(
        step, warmup=1 if quick else 3, min_steps=3, max_steps=5 if quick else 200,
        max_seconds=min(2.5, max(0.2, seconds / 2)), sync=device.sync,
    )
    row.steps = len(samples)
    row.p50_ms = round(statistics.median(samples), 3)
    row.p99_ms = round(percentile(samples, 99), 3)
    row.frames_per_s = round(row.batch * 1000 / statistics.mean(samples), 1)
    if device.cuda:
        row.measured_mb_per_row = round((torch.cuda.max_memory_allocated() - base) / row.batch / 1e6, 3)
    del step


def pick_layout(net, device: Device, size: int, precision: str, batch: int, quick: bool) -> tuple[str, dict]:
    """channels-last or contiguous, whichever steps faster here (a few eager steps each)."""
    times = {}
    for layout in ("contiguous", "channels_last"):
        device.free()
        step = StreamStep(net, device, batch, size, precision, layout == "channels_last", graph=False)
        samples = measure(step, warmup=1 if quick else 2, min_steps=3, max_steps=3 if quick else 8,
                          max_seconds=1.0, sync=device.sync)
        times[layout] = round(statistics.median(samples), 3)
        del step
    return min(times, key=times.get), times


def stream_section(args, device: Device, budget: Budget) -> tuple[list[StreamRow], list[dict]]:
    rows: list[StreamRow] = []
    probes: list[dict] = []
    precisions = ("fp32", "bf16")
    graphs = (False, True) if device.cuda else (False,)
    for model_index, short in enumerate(args.models):
        name = f"movinet_{short}_stream"
        # the models share the section: what one leaves is the next one's
        own = budget.share(budget.left() / (len(args.models) - model_index))
        net, folded = inference_model(name, device)
        size = args.size or model.model_info(name).input_size
        per_session = round(state_bytes(net, size) / 1e6, 3)
        print(f"[gpu.py] {name} at {size}x{size} (BN folded: {folded}), state {per_session} MB per session",
              file=sys.stderr, flush=True)
        layouts: dict[str, str] = {}
        for precision in precisions:
            probe_batch = min(max(args.batches), 4 if args.quick else 256)
            layouts[precision], times = "contiguous", {"skipped": "time"}
            if own.left() > 0:
                try:
                    layouts[precision], times = pick_layout(net, device, size, precision, probe_batch, args.quick)
                except Exception as error:  # noqa: BLE001 (a probe that fails must not end the run)
                    times = {"error": "oom" if out_of_memory(error) else describe(error)}
            probes.append({"model": name, "precision": precision, "batch": probe_batch, "p50_ms": times,
                           "chosen": layouts[precision]})
        # batches outermost: when time runs short, the largest batches are the ones left out
        configs = [(batch, precision, graph) for batch in args.batches for precision in precisions for graph in graphs]
        skip: dict[tuple[str, bool], str] = {}  # after an oom or error, the larger batches of that kind
        for index, (batch, precision, graph) in enumerate(configs):
            row = StreamRow(name, size, batch, precision, layouts[precision], graph, state_mb_per_session=per_session)
            rows.append(row)
            if (precision, graph) in skip:
                row.status = skip[precision, graph]
            elif own.left() <= 0:
                row.status = "skipped: time"
            else:
                try:
                    stream_config(net, device, row, own.left() / (len(configs) - index), args.quick)
                except Exception as error:  # noqa: BLE001 (recorded in the table; the run goes on)
                    if out_of_memory(error):
                        row.status, skip[precision, graph] = "oom", "skipped: oom at a smaller batch"
                    else:
                        row.status, skip[precision, graph] = describe(error), "skipped: error at a smaller batch"
                device.free()
            print(f"[gpu.py]   {format_stream_row(row)}", file=sys.stderr, flush=True)
        del net
        device.free()
    return rows, probes


def format_stream_row(row: StreamRow) -> str:
    def show(value, digits=1):
        return "-" if value is None else f"{value:,.{digits}f}"

    graph = "yes" if row.graph else "no"
    return (f"| {row.model} | {row.size} | {row.batch} | {row.precision} | {row.layout} | {graph} | "
            f"{show(row.frames_per_s)} | {show(row.p50_ms, 2)} | {show(row.p99_ms, 2)} | {row.steps} | "
            f"{show(row.state_mb_per_session, 2)} | {show(row.measured_mb_per_row, 2)} | {row.status} |")


# --- 3: fp32 against bf16 ------------------------------------------------------------------------


def test_video(size: int, short_side: int, frames: int) -> tuple[torch.Tensor, str]:
    """float [3, T, size, size]: the committed test video when PyAV can read it, else a generated one."""
    from model.preprocess import preprocess_frames

    try:
        import av

        with av.open(str(TEST_VIDEO)) as container:
            rgb = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(frames), container.decode(video=0))]
        return preprocess_frames(np.stack(rgb), size, short_side), f"{TEST_VIDEO.name} ({len(rgb)} frames)"
    except Exception:  # no PyAV, no file: a textured scene panning and zooming
        rng = np.random.default_rng(0)
        scene = rng.integers(0, 256, (short_side * 2, short_side * 3, 3), dtype=np.uint8)
        scene = np.repeat(np.repeat(scene[::8, ::8], 8, 0), 8, 1)  # blocks, not noise
        rgb = [scene[t : t + short_side, 2 * t : 2 * t + short_side] for t in range(frames)]
        return preprocess_frames(np.stack(rgb), size, short_side), f"generated ({frames} frames)"


def agreement_section(args, device: Device, budget: Budget) -> list[dict]:
    rows = []
    for short in args.models:
        name = f"movinet_{short}_stream"
        if budget.left() <= 0:
            rows.append({"model": name, "status": "skipped: time"})
            continue
        try:
            rows.append(agreement_of(name, args, device, budget))
        except Exception as error:  # noqa: BLE001 (recorded in the table; the run goes on)
            rows.append({"model": name, "status": "oom" if out_of_memory(error) else describe(error)})
        print(f"[gpu.py] agreement {rows[-1]}", file=sys.stderr, flush=True)
        device.free()
    return rows


def agreement_of(name: str, args, device: Device, budget: Budget) -> dict:
    """fp32 and bf16 softmax over ``sessions`` x ``frames`` of one video, compared."""
    frames = 6 if args.quick else 120
    sessions = 2 if args.quick else 16
    tags = model.available_weights(name)
    weights = next((tag for tag in ("kinetics600", "motion") if tag in tags), None)
    net, _ = inference_model(name, device, weights, perturb=True)
    size = args.size or net.info.input_size
    clip, source = test_video(size, max(size, net.info.eval_min_size), frames)
    # session i sees the video from its frame i on (looped), so the batch holds different scenes
    video = torch.stack([clip.roll(-index, dims=1) for index in range(sessions)]).to(device.name)
    probs = {}
    started = time.perf_counter()
    for precision in ("fp32", "bf16"):
        state, out = net.init_state(sessions, size, size), []
        with torch.inference_mode(), device.autocast(precision):
            for t in range(frames):
                if budget.left() <= 0 and t > 0:
                    break
                logits, state = net(video[:, :, t : t + 1], state)
                out.append(torch.softmax(logits.float(), dim=-1))
        probs[precision] = torch.stack(out, dim=1)  # (sessions, T, classes)
    steps = min(probs["fp32"].shape[1], probs["bf16"].shape[1])
    fp32, bf16 = probs["fp32"][:, :steps], probs["bf16"][:, :steps]
    return {
        "model": name, "weights": weights or "random (perturbed)", "video": source, "size": size,
        "sessions": sessions, "frames": steps,
        "top1_agreement": round(float((fp32.argmax(-1) == bf16.argmax(-1)).float().mean()), 4),
        "max_prob_diff": round(float((fp32 - bf16).abs().max()), 5),
        "seconds": round(time.perf_counter() - started, 1), "status": "ok",
    }


# --- 4: onnxruntime ------------------------------------------------------------------------------


def onnxruntime_section(args, device: Device, budget: Budget) -> tuple[list[dict], dict]:
    try:
        import onnxruntime as ort

        from model.export import export_onnx, state_output_name
    except ImportError as error:
        return [], {"status": f"skipped: {error}"}
    device.free()  # what torch's allocator caches, onnxruntime cannot have
    available = ort.get_available_providers()
    use_cuda = device.cuda and "CUDAExecutionProvider" in available
    info = {"version": ort.__version__, "available_providers": available}
    # HEURISTIC: an exhaustive cuDNN search per conv and batch size would eat the section's time;
    # kSameAsRequested: the default arena doubles, which at batch 4096 of A2 (44 GB of state) would not fit
    cuda_options = {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="movinet-onnx-"))
    for model_index, short in enumerate(args.models):
        name = f"movinet_{short}_stream"
        own = budget.share(budget.left() / (len(args.models) - model_index))
        if own.left() < 5:
            rows.append({"model": name, "status": "skipped: time"})
            continue
        net = model.create_model(name).eval()
        size = args.size or net.info.input_size
        try:
            session, export_s = onnx_session(ort, export_onnx, net, folder / f"{name}.onnx", size, args, use_cuda, cuda_options)
        except Exception as error:  # noqa: BLE001 (recorded in the table; the run goes on)
            rows.append({"model": name, "size": size, "status": describe(error)})
            continue
        provider = session.get_providers()[0]  # onnxruntime falls back to the CPU when CUDA fails to load
        state_names = list(net.init_state(1, size, size))
        if provider == "CUDAExecutionProvider":
            batches = args.batches
        else:  # the CPU provider: the small batches only, a 4096 batch would take the whole budget
            batches = [batch for batch in args.batches if batch <= 8] or [min(args.batches)]
        for batch in batches:
            row = {"model": name, "size": size, "batch": batch, "provider": provider, "export_s": export_s}
            rows.append(row)
            if own.left() <= 0:
                row["status"] = "skipped: time"
                continue
            try:
                step = onnx_stream_step(ort, session, net, batch, size, state_names, state_output_name,
                                        provider == "CUDAExecutionProvider")
                samples = measure(step, warmup=1 if args.quick else 3, min_steps=3, max_steps=5 if args.quick else 100,
                                  max_seconds=min(2.5, max(0.2, own.left() / 4)), sync=lambda: None)
            except Exception as error:  # onnxruntime raises its own types, out of memory among them
                row["status"] = f"error: {str(error).splitlines()[0][:120]}"
                continue
            row.update(status="ok", steps=len(samples), p50_ms=round(statistics.median(samples), 3),
                       p99_ms=round(percentile(samples, 99), 3),
                       frames_per_s=round(batch * 1000 / statistics.mean(samples), 1))
            print(f"[gpu.py] onnxruntime {row}", file=sys.stderr, flush=True)
        del session, net
    return rows, info


def onnx_session(ort, export_onnx, net, path: Path, size: int, args, use_cuda: bool, cuda_options: dict):
    started = time.perf_counter()
    export_onnx(net, path, size=(size, size))
    export_s = round(time.perf_counter() - started, 1)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.threads:
        options.intra_op_num_threads = args.threads
    providers = [("CUDAExecutionProvider", cuda_options), "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(path), options, providers=providers), export_s


def onnx_stream_step(ort, session, net, batch: int, size: int, state_names, output_name, on_cuda: bool):
    """A closure running one step; with CUDA the state stays on the device (IO binding)."""
    frame = np.random.default_rng(0).random((1, 3, 1, size, size), dtype=np.float32)
    frames = np.ascontiguousarray(np.broadcast_to(frame, (batch, 3, 1, size, size)))
    dtypes = {"tensor(float)": np.float32, "tensor(int32)": np.int32}
    zeros = {node.name: np.zeros([batch, *node.shape[1:]], dtypes[node.type])
             for node in session.get_inputs() if node.name in state_names}
    if not on_cuda:
        holder = {"state": zeros}
        outputs = ["logits", *(output_name(name) for name in state_names)]

        def cpu_step() -> None:
            result = session.run(outputs, {"frames": frames, **holder["state"]})
            holder["state"] = dict(zip(state_names, result[1:]))

        return cpu_step
    holder = {"state": {name: ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0) for name, value in zeros.items()}}

    def cuda_step() -> None:
        binding = session.io_binding()
        binding.bind_cpu_input("frames", frames)  # the one H2D copy of the step
        for name in state_names:
            binding.bind_ortvalue_input(name, holder["state"][name])
        binding.bind_output("logits", "cpu")  # bound in the graph's output order: logits, then states
        for name in state_names:
            binding.bind_output(output_name(name), "cuda", 0)
        session.run_with_iobinding(binding)
        values = binding.get_outputs()
        holder["state"] = dict(zip(state_names, values[1:]))

    return cuda_step


# --- report --------------------------------------------------------------------------------------


def machine_info(device: Device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device.name,
            "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def print_report(report: dict) -> None:
    machine = report["machine"]
    print(f"\n## MoViNet stream on {machine.get('gpu', 'CPU')} (torch {machine['torch']}, "
          f"{'quick' if report['config']['quick'] else 'full'} run, {report['elapsed_s']} s)\n")
    print("| model | size | batch | precision | layout | CUDA graph | frames/s | p50 ms | p99 ms | steps | "
          "state MB/session | measured MB/row | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in report["stream"]:
        print(format_stream_row(StreamRow(**row)))
    print("\nLayout probe (eager p50 ms per layout; the faster one is used above):\n")
    for probe in report["layout_probe"]:
        print(f"- {probe['model']} {probe['precision']} batch {probe['batch']}: {probe['p50_ms']} -> {probe['chosen']}")
    print("\n| model | weights | video | sessions x frames | fp32/bf16 top-1 agreement | max prob diff | status |")
    print("|---|---|---|---|---|---|---|")
    for row in report["agreement"]:
        if row["status"] != "ok":
            print(f"| {row['model']} | - | - | - | - | - | {row['status']} |")
            continue
        print(f"| {row['model']} | {row['weights']} | {row['video']} | {row['sessions']} x {row['frames']} | "
              f"{row['top1_agreement'] * 100:.2f} % | {row['max_prob_diff']:.5f} | ok |")
    onnx_info = report["onnxruntime_info"]
    print(f"\nonnxruntime {onnx_info.get('version', '-')} ({onnx_info.get('status', 'ok')}; providers: "
          f"{', '.join(onnx_info.get('available_providers', []))}):\n")
    print("| model | size | batch | provider | frames/s | p50 ms | p99 ms | export s | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in report["onnxruntime"]:
        def show(key, digits=1, row=row):
            return "-" if row.get(key) is None else f"{row[key]:,.{digits}f}"

        print(f"| {row['model']} | {row.get('size', '-')} | {row.get('batch', '-')} | {row.get('provider', '-')} | "
              f"{show('frames_per_s')} | {show('p50_ms', 2)} | {show('p99_ms', 2)} | {show('export_s')} | {row['status']} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small batches and sizes, a few steps (a smoke run)")
    parser.add_argument("--models", help="comma-separated backbones of stream models (default a0,a2; quick a0)")
    parser.add_argument("--batches", help="comma-separated batch sizes (default 1,64,256,1024,4096; quick 1,4)")
    parser.add_argument("--size", type=int, help="frame size (default the model's; quick 32)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch and onnxruntime (default: theirs)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time for all sections together")
    parser.add_argument("--sections", default="stream,agreement,onnxruntime")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    args.models = [item.strip() for item in (args.models or ("a0" if args.quick else "a0,a2")).split(",") if item.strip()]
    args.batches = [int(item) for item in args.batches.split(",")] if args.batches else \
        list(QUICK_BATCHES if args.quick else FULL_BATCHES)
    args.sections = [item.strip() for item in args.sections.split(",")]
    unknown = sorted(set(args.sections) - set(SECTION_SHARES))
    if unknown:
        parser.error(f"unknown sections {unknown}; sections are {sorted(SECTION_SHARES)}")
    if args.quick and args.size is None:
        args.size = 32
    return args


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    args = parse_args(argv)
    device = Device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.cuda and not torch.cuda.is_available():
        print("error: no CUDA device visible to torch; use --device cpu", file=sys.stderr)
        return 2
    if device.cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False  # "fp32" means fp32
        torch.backends.cuda.matmul.allow_tf32 = False
    budget = Budget(args.budget_s)
    total_share = sum(SECTION_SHARES[name] for name in args.sections)
    report: dict = {"machine": machine_info(device), "config": {k: v for k, v in vars(args).items()},
                    "stream": [], "layout_probe": [], "agreement": [], "onnxruntime": [], "onnxruntime_info": {}}
    for section in ("stream", "agreement", "onnxruntime"):
        if section not in args.sections:
            continue
        # a section gets its share of what is left, so time saved early goes to the later ones
        remaining = sum(SECTION_SHARES[name] for name in args.sections
                        if list(SECTION_SHARES).index(name) >= list(SECTION_SHARES).index(section))
        own = budget.share(budget.left() * SECTION_SHARES[section] / remaining if total_share else 0)
        print(f"[gpu.py] section {section}: {own.left():.0f} s", file=sys.stderr, flush=True)
        if section == "stream":
            rows, probes = stream_section(args, device, own)
            report["stream"], report["layout_probe"] = [asdict(row) for row in rows], probes
        elif section == "agreement":
            report["agreement"] = agreement_section(args, device, own)
        else:
            report["onnxruntime"], report["onnxruntime_info"] = onnxruntime_section(args, device, own)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    print_report(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
