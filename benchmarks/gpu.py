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

This script owns the command line, each section's share of the budget, the order the sections
run in and the JSON file; the sections themselves live in ``benchmarks/_gpu/``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from _gpu.agreement import agreement_section
from _gpu.harness import Budget, Device
from _gpu.onnx_runtime import onnxruntime_section
from _gpu.report import machine_info, print_report
from _gpu.stream import stream_section

FULL_BATCHES = (1, 64, 256, 1024, 4096)
QUICK_BATCHES = (1, 2)
SECTION_SHARES = {"stream": 0.62, "agreement": 0.1, "onnxruntime": 0.28}


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
