"""Model speed and memory on this machine's CPU (a script, not a test).

    python benchmarks/model_speed.py [--quick] [--json out.json]

Measures, with random weights (speed does not depend on them):

1. per-frame latency of A0/A1/A2 stream at their official sizes, batch 1, 1 and 2 threads,
   median and p90, for the plain model and the inference variants (BN folded, channels_last_3d,
   the TorchScript trace the service runs, torch.compile);
2. one base-model clip forward (A0 base, 50x172x172);
3. the stream step against re-running a 50-frame sliding window of the base model, as the stream
   grows to 50, 200 and 1000 frames: time per new frame, total compute, and peak resident memory
   (each case in its own subprocess so that peaks do not mix);
4. batched streams: 1, 8 and 32 sessions of A0 stream stepped together (one frame each).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import model  # noqa: E402
from model.optimize import optimize_for_inference  # noqa: E402


def timed(fn, repeats: int, warmup: int = 3) -> dict:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return {"median_ms": round(statistics.median(samples), 2),
            "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 2), "n": repeats}


def stream_latency(name: str, threads: int, variant: str, repeats: int) -> dict:
    torch.set_num_threads(threads)
    net = model.create_model(name).eval()
    size = net.info.input_size
    if variant != "plain":
        net = optimize_for_inference(net, channels_last="cl" in variant, compile="compile" in variant)
    forward = net
    if "trace" in variant:  # what the service runs (model.optimize.trace_frame_step)
        from model.optimize import trace_frame_step

        forward = trace_frame_step(net, size, size)
    frame = torch.rand(1, 3, 1, size, size)
    if "cl" in variant:
        frame = frame.to(memory_format=torch.channels_last_3d)
    state = net.init_state(1, size, size)
    holder = {"state": state}

    @torch.no_grad()
    def step():
        _, holder["state"] = forward(frame, holder["state"])

    return timed(step, repeats, warmup=5 if "compile" in variant else 3)


def peak_case(kind: str, frames: int) -> dict:
    """Run one growth case in this process (called in a subprocess); return time and peak RSS."""
    torch.set_num_threads(2)
    window = 50
    with torch.no_grad():
        if kind == "stream":
            net = optimize_for_inference(model.create_model("movinet_a0_stream"))
            state = net.init_state(1, 172, 172)
            frame = torch.rand(1, 3, 1, 172, 172)
            start = time.perf_counter()
            for _ in range(frames):
                _, state = net(frame, state)
            elapsed = time.perf_counter() - start
            measured = frames
        else:  # re-run the base model on the last `window` frames for every new frame
            net = optimize_for_inference(model.create_model("movinet_a0_base"))
            clip = torch.rand(1, 3, window, 172, 172)
            measured = min(frames, 5)  # each step costs the same once the window is full
            start = time.perf_counter()
            for _ in range(measured):
                net(clip)
            elapsed = time.perf_counter() - start
    per_frame = elapsed / measured * 1000
    return {"kind": kind, "frames": frames, "ms_per_new_frame": round(per_frame, 1),
            "total_s": round(per_frame * frames / 1000, 1), "extrapolated": measured != frames,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def batched_streams(sessions: int, repeats: int) -> dict:
    torch.set_num_threads(2)
    net = optimize_for_inference(model.create_model("movinet_a0_stream"))
    states = model.stack_states([net.init_state(1, 172, 172) for _ in range(sessions)])
    frames = torch.rand(sessions, 3, 1, 172, 172)
    holder = {"state": states}

    @torch.no_grad()
    def step():
        _, holder["state"] = net(frames, holder["state"])

    result = timed(step, repeats)
    result["sessions"] = sessions
    result["ms_per_session_frame"] = round(result["median_ms"] / sessions, 2)
    result["frames_per_s"] = round(sessions * 1000 / result["median_ms"], 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and models")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    parser.add_argument("--case", nargs=2, metavar=("KIND", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(peak_case(args.case[0], int(args.case[1]))))
        return 0
    repeats = 20 if args.quick else 50
    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
                                 "torch": torch.__version__, "python": platform.python_version()}}
    names = ["movinet_a0_stream"] if args.quick else ["movinet_a0_stream", "movinet_a1_stream", "movinet_a2_stream"]
    latency = []
    for name in names:
        for threads in (1, 2):
            variants = (["plain", "fused", "fused+cl", "fused+trace"] if name.endswith("a0_stream")
                        else ["plain", "fused", "fused+trace"])
            if args.compile and name.endswith("a0_stream"):
                variants.append("fused+compile")  # torch.compile takes minutes to build on 2 cores
            for variant in variants:
                try:
                    row = {"model": name, "threads": threads, "variant": variant, **stream_latency(name, threads, variant, repeats)}
                except Exception as error:  # a variant that fails on this machine is reported, not fatal
                    row = {"model": name, "threads": threads, "variant": variant, "error": str(error)[:200]}
                latency.append(row)
                print(json.dumps(row), flush=True)
    results["stream_latency"] = latency

    torch.set_num_threads(2)
    base = optimize_for_inference(model.create_model("movinet_a0_base"))
    clip = torch.rand(1, 3, 50, 172, 172)
    with torch.no_grad():
        results["base_clip"] = {"model": "movinet_a0_base", "clip": "50x172x172", "threads": 2,
                                **timed(lambda: base(clip), 3 if args.quick else 5, warmup=1)}
    print(json.dumps(results["base_clip"]), flush=True)

    growth = []
    for kind in ("stream", "sliding_base"):
        for frames in (50, 200, 1000):
            out = subprocess.run([sys.executable, __file__, "--case", kind, str(frames)], capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            growth.append(row)
            print(json.dumps(row), flush=True)
    results["growth"] = growth

    batched = []
    for sessions in (1, 8, 32):
        row = batched_streams(sessions, 10 if args.quick else 20)
        batched.append(row)
        print(json.dumps(row), flush=True)
    results["batched"] = batched
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
