"""The one-frame stream paths side by side (a script, not a test).

    python benchmarks/fast_path.py [--batches 1 8 64] [--threads 2] [--paths ...] [--json out.json]

For A0 stream at 172x172 (random weights: speed does not depend on them) and each batch size,
every path runs one frame for every session per call, the sessions at different positions in
their streams, the paths interleaved call by call so that a busy machine slows them alike:

* ``eager``: the plain reference, the model as written (NCTHW, BN not folded, no trace);
* ``trace``: BN folded + ``torch.jit.trace`` (``model.optimize.trace_frame_step``, what the
  service ran before ``for_streaming``);
* ``graph`` / ``graph-bf16``: ``model.optimize.FrameGraph`` run eagerly (on a CPU its convs and
  matmuls are oneDNN's fused ops, the activation or residual add applied as results are written);
* ``graph-ops`` / ``graph-ops-bf16``: the same graph with plain ops (conv or matmul, then the
  activation: a second pass over each feature map), what ``graph`` was before the fused ops;
* ``graph-trace`` / ``graph-trace-bf16``: the graph as TorchScript traces (plain ops, and
  oneDNN's fused ones from ``FrameGraph.fuse_from_pixels`` a call:
  ``model.optimize.trace_frame_graph``), what the service runs: compare them with
  ``--beside-threads 2``, where Python threads of the same process want the GIL as a server's
  event loop and decoders do;
* ``compiled`` / ``compiled-bf16``: the FrameGraph through inductor, static graphs for
  ``--compiled-sizes`` (default: for_streaming's, per precision), other batches in chunks or
  on the eager graph;
* ``auto``: what ``for_streaming(net, compile="now")`` picks on this machine;
* ``service``: what the service runs with its shipped defaults (``for_streaming(net, precision="fp32",
  compile="off", shared_gil=True)``).

Printed per path and batch: wall ms per call (median and min of ``--repeats``), ms per
session-frame, session-frames/s, the speed-up over ``eager`` (medians), and the CPU time of the
calling thread (at 1 thread it is the work done, whatever else the machine runs); plus state
bytes per session, compile times, and the machine's matmul GFLOP/s at the time of the run.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import model  # noqa: E402
from model.optimize import DTYPES, FrameGraph, StreamStep, for_streaming, retain_freed_memory  # noqa: E402

ALL_PATHS = ("eager", "trace", "graph-ops", "graph-ops-bf16", "graph", "graph-bf16", "graph-trace", "graph-trace-bf16",
             "compiled", "compiled-bf16", "auto", "service")


def matmul_gflops(dtype: torch.dtype, n: int = 1024) -> float:
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = min(_timed(lambda: a @ b) for _ in range(10))
    return round(2 * n**3 / best / 1e9, 1)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def staggered_state(step, batch: int, size: int, generator: torch.Generator) -> model.State:
    """A state for ``batch`` sessions at different positions: random buffers, frame counts 1..500."""
    state = step.init_state(batch, size, size)
    for key, value in state.items():
        if key.endswith("frame_count"):
            state[key] = torch.randint(1, 500, value.shape, generator=generator, dtype=value.dtype)
        else:
            state[key] = torch.rand(value.shape, generator=generator).to(value.dtype).contiguous(
                memory_format=torch.channels_last_3d if value.ndim == 5 and value.shape[2] > 1
                and value.is_contiguous(memory_format=torch.channels_last_3d) else torch.contiguous_format)
    return state


def state_bytes(state: model.State, batch: int) -> int:
    return sum(value.numel() * value.element_size() for value in state.values()) // batch


class _Reference:
    """The eager model with an ``init_state`` like a StreamStep's."""

    def __init__(self, net) -> None:
        self.net = net

    def __call__(self, frames, state):
        return self.net(frames, state)

    def init_state(self, batch, height, width):
        return self.net.init_state(batch, height, width)


def build_paths(names: list[str], size: int, compiled_sizes: list[int] | None, freeze: bool) -> tuple[dict, dict]:
    net = model.create_model("movinet_a0_stream").eval()
    paths, build_seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        precision = "bf16" if name.endswith("bf16") else "fp32"
        if name == "eager":
            paths[name] = _Reference(net)
        elif name == "trace":
            paths[name] = for_streaming(net, backend="trace", height=size, compile="off")
        elif name.startswith("graph-trace"):
            paths[name] = for_streaming(net, precision=precision, backend="graph-trace", height=size, compile="off")
        elif name.startswith("graph-ops"):  # the graph with plain ops: conv/matmul, then the activation
            graph = FrameGraph(net, size, size, DTYPES[precision], fused=False).eval()
            paths[name] = StreamStep(net, size, size, precision, "graph", graph, [])
        elif name.startswith("graph"):
            paths[name] = for_streaming(net, precision=precision, backend="graph", height=size, compile="off")
        elif name == "service":
            paths[name] = for_streaming(net, precision="fp32", height=size, compile="off", shared_gil=True)
        elif name == "auto":
            paths[name] = for_streaming(net, height=size, compile="now")
        elif name.startswith("compiled"):
            step = for_streaming(net, precision=precision, backend="compiled", height=size, compile="now",
                                 batch_sizes=compiled_sizes, freeze=freeze)
            if step.backend != "compiled":
                print(json.dumps({"path": name, "error": step.compile_error}), flush=True)
                continue
            paths[name] = step
        build_seconds[name] = round(time.perf_counter() - start, 1)
        print(json.dumps({"path": name, "built_s": build_seconds[name],
                          "describe": getattr(paths[name], "describe", lambda: {})()}, default=str), flush=True)
    return paths, build_seconds


def bench_batch(paths: dict, batch: int, size: int, repeats: int, beside_threads: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(batch)
    frames = torch.rand(batch, 3, 1, size, size, generator=generator)
    states = {name: staggered_state(step, batch, size, generator) for name, step in paths.items()}
    bytes_per_session = {name: state_bytes(state, batch) for name, state in states.items()}
    wall = {name: [] for name in paths}
    cpu = {name: [] for name in paths}
    with torch.no_grad():
        for name, step in paths.items():  # warm-up
            for _ in range(2):
                _, states[name] = step(frames, states[name])
        with BusyThreads(beside_threads):
            for _ in range(repeats):
                for name, step in paths.items():
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    _, states[name] = step(frames, states[name])
                    wall[name].append((time.perf_counter() - start) * 1000)
                    cpu[name].append((time.thread_time() - start_cpu) * 1000)
    rows = []
    reference = statistics.median(wall["eager"]) if "eager" in wall else None
    for name in paths:
        median = statistics.median(wall[name])
        rows.append({
            "batch": batch, "path": name, "median_ms": round(median, 2), "min_ms": round(min(wall[name]), 2),
            "ms_per_session_frame": round(median / batch, 3), "session_frames_per_s": round(batch * 1000 / median, 1),
            "speedup_vs_eager": round(reference / median, 2) if reference else None,
            "cpu_ms_median": round(statistics.median(cpu[name]), 2),
            "state_bytes_per_session": bytes_per_session[name], "beside_threads": beside_threads,
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


class BusyThreads:
    """``count`` Python threads that, while the block runs, each do 0.3 ms of pure-Python work
    then sleep 0.5 ms, over and over: the GIL traffic of a server's event loop and decoders
    beside its forwards (each wants the GIL ~35 % of the time)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _run(self) -> None:
        while not self.stop.is_set():
            time.sleep(0.0005)
            until = time.perf_counter() + 0.0003
            while time.perf_counter() < until:
                pass

    def __enter__(self) -> BusyThreads:
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.count)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def wake_up_delays(fn, seconds: float) -> dict:
    """A Python thread sleeps 1 ms in a loop while ``fn`` runs in this one: the median and p90 of
    how late it wakes up. A forward that holds the GIL delays each wake-up until it lets go; one
    that releases it (C++ without Python in between) leaves the delays as when idle."""
    stop, delays = threading.Event(), []

    def probe() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            time.sleep(0.001)
            delays.append((time.perf_counter() - start - 0.001) * 1000)

    thread = threading.Thread(target=probe)
    thread.start()
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
    stop.set()
    thread.join()
    delays.sort()
    return {"median_ms": round(statistics.median(delays), 3), "p90_ms": round(delays[int(0.9 * len(delays))], 3),
            "p99_ms": round(delays[int(0.99 * len(delays))], 3), "wake_ups": len(delays)}


def gil_probe(paths: dict, batch: int, size: int, seconds: float) -> list[dict]:
    frames = torch.rand(batch, 3, 1, size, size)
    rows = [{"path": "idle", "batch": batch, **wake_up_delays(lambda: time.sleep(0.01), seconds)}]
    print(json.dumps(rows[-1]), flush=True)
    for name, step in paths.items():
        holder = {"state": step.init_state(batch, size, size)}

        def forward(step=step, holder=holder) -> None:
            with torch.no_grad():
                _, holder["state"] = step(frames, holder["state"])

        forward()
        rows.append({"path": name, "batch": batch, **wake_up_delays(forward, seconds)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--size", type=int, default=172)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20, help="calls per path and batch (interleaved)")
    parser.add_argument("--paths", nargs="+", default=list(ALL_PATHS), choices=ALL_PATHS)
    parser.add_argument("--compiled-sizes", type=int, nargs="+", help="default: for_streaming's per precision")
    parser.add_argument("--freeze", action="store_true", help="compile with inductor freezing (not cached)")
    parser.add_argument("--gil", type=int, metavar="BATCH", help="also probe the GIL during forwards at this batch")
    parser.add_argument("--beside-threads", type=int, default=0, metavar="N",
                        help="time the calls while N busy Python threads want the GIL (see BusyThreads)")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--glibc-default-malloc", action="store_true",
                        help="do not call retain_freed_memory() (what the service does at start)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.glibc_default_malloc:
        retain_freed_memory()
    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "python": platform.python_version(),
                    "matmul_gflops_fp32": matmul_gflops(torch.float32),
                    "matmul_gflops_bf16": matmul_gflops(torch.bfloat16)},
        "args": vars(args),
    }
    print(json.dumps(results["machine"]), flush=True)
    paths, results["build_seconds"] = build_paths(args.paths, args.size, args.compiled_sizes, args.freeze)
    results["rows"] = []
    for batch in args.batches:
        repeats = max(3, args.repeats if batch <= 8 else args.repeats * 8 // batch)
        results["rows"] += bench_batch(paths, batch, args.size, repeats, args.beside_threads)
    if args.gil:
        results["gil"] = gil_probe(paths, args.gil, args.size, 4.0)
    results["machine_after"] = {"matmul_gflops_fp32": matmul_gflops(torch.float32)}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
