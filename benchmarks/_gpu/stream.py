"""Sections 1 and 2 of ``benchmarks/gpu.py``: the stream step a server runs, and its memory.

This module owns one step for a batch of sessions (pinned H2D frames, the forward with the state
on the device, D2H logits; eager or one CUDA graph), the layout probe, the sweep over models,
batches, precisions and graphs within the section's budget (an ``oom`` skips the larger batches
of its kind), and the markdown row of one result.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

import torch

import model

from .harness import (
    Budget,
    Device,
    describe,
    inference_model,
    measure,
    out_of_memory,
    percentile,
    state_bytes,
)


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
