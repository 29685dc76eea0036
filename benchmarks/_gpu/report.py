"""The report of ``benchmarks/gpu.py``: what machine it ran on, and its results as markdown tables."""

from __future__ import annotations

import platform

import torch

from .harness import Device
from .stream import StreamRow, format_stream_row


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
