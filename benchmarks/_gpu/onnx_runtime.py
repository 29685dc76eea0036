"""Section 4 of ``benchmarks/gpu.py``: the ONNX export (``model.export``) under onnxruntime.

This module owns building the session (the CUDA execution provider when there is one, with
options that fit the largest batches, else the CPU one), one stream step per provider (on CUDA
the state stays on the device through IO binding) and the sweep over models and batches.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import model

from .harness import Budget, Device, describe, measure, percentile


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
