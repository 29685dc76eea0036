"""Every speed figure of docs/benchmarks.md's summary in one go (a script, not a test).

    python benchmarks/table.py                      # A0 172² paths, the bundled model's paths, the service
    python benchmarks/table.py --quick              # fewer repeats and levels (about 10 minutes)
    python benchmarks/table.py --skip-service --json table.json

Runs, one after the other, each in its own process so that one's threads and caches do not slow
the next:

1. ``benchmarks/fast_path.py`` for A0 stream at 172x172 (the official size, random weights):
   latency of one session and throughput at 1/8/64/256 sessions for the plain eager reference,
   the service's path (fp32, no compile) and the path ``for_streaming`` picks here (``auto``:
   bf16 and compiled where they pass), with the state bytes per session;
2. the same at 64x64 for the bundled motion model's size (what the embedded service runs);
3. ``benchmarks/service_load.py``: the embedded service with its shipped defaults, the bundled
   model, clients on this machine at 5 fps: the most sessions held with p99 < 300 ms and no drop.

Prints a markdown table per part (paste it into docs/benchmarks.md with the date and machine
line it prints first) and, with ``--json``, everything measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_json(script: str, args: list[str], timeout: float) -> dict:
    """Run a benchmark script with ``--json`` into a temporary file; its results, its output streamed."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out.json"
        command = [sys.executable, str(ROOT / "benchmarks" / script), *args, "--json", str(out)]
        print("$ python", f"benchmarks/{script}", *args, flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, timeout=timeout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
        if done.returncode != 0 or not out.exists():
            print(done.stdout[-4000:], file=sys.stderr)
            raise SystemExit(f"{script} failed with exit code {done.returncode}")
        print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
        return json.loads(out.read_text())


def path_table(results: dict, title: str) -> str:
    rows = results["rows"]
    lines = [f"**{title}** (ms per call: median of the interleaved calls; sf/s = session-frames per second)", "",
             "| path | sessions | ms per call | ms per session-frame | session-frames/s | vs eager | state per session |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "median_ms" not in row:
            continue
        lines.append(f"| {row['path']} | {row['batch']} | {row['median_ms']:.2f} | {row['ms_per_session_frame']:.3f} | "
                     f"{row['session_frames_per_s']:.0f} | {row['speedup_vs_eager'] or 1:.2f}x | "
                     f"{row['state_bytes_per_session'] / 1024:.0f} kB |")
    picked = [row for row in rows if row.get("path") == "auto" and "median_ms" in row]
    if picked:
        single = next((row for row in picked if row["batch"] == 1), None)
        best = max(picked, key=lambda row: row["session_frames_per_s"])
        if single:
            lines += ["", f"auto: {best['session_frames_per_s']:.0f} session-frames/s at {best['batch']} sessions, "
                          f"{best['session_frames_per_s'] / single['session_frames_per_s']:.1f}x one session's."]
    return "\n".join(lines)


def service_table(results: dict) -> str:
    lines = ["**Embedded service, shipped defaults, bundled model, 5-fps clients on this machine**", "",
             "| sessions | p50 ms | p99 ms | labelled / sent | dropped | mean batch | forward ms | held |",
             "|---|---|---|---|---|---|---|---|"]
    for level in results["levels"]:
        lines.append(f"| {level['sessions']} | {level['p50_ms'] or 0:.0f} | {level['p99_ms'] or 0:.0f} | "
                     f"{level['labelled']} / {level['sent']} | {level['dropped']} | {level['mean_batch'] or 0:.1f} | "
                     f"{level['forward_ms'] or 0:.1f} | {'yes' if level['held'] else 'no'} |")
    lines += ["", f"Most sessions held: **{results['max_sessions_held']}**."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, sessions and levels")
    parser.add_argument("--skip-service", action="store_true", help="only the model paths")
    parser.add_argument("--sessions", type=int, nargs="+", help="service levels (default 32 64 96 128 160)")
    parser.add_argument("--json", type=Path, help="also write everything here")
    args = parser.parse_args(argv)

    batches = ["1", "8", "64"] if args.quick else ["1", "8", "64", "256"]
    repeats = ["--repeats", "5" if args.quick else "15"]
    paths = ["--paths", "eager", "service", "auto"]
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f}", flush=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    results["a0_172"] = run_json("fast_path.py", ["--size", "172", "--batches", *batches, *repeats, *paths], 3600)
    results["a0_64"] = run_json("fast_path.py", ["--size", "64", "--batches", *batches, *repeats, *paths], 3600)
    tables = [path_table(results["a0_172"], "A0 stream 172x172, 2 threads"),
              path_table(results["a0_64"], "A0 stream 64x64 (the bundled model's size), 2 threads")]
    if not args.skip_service:
        levels = args.sessions or ([32, 64, 128] if args.quick else [32, 64, 96, 128, 160])
        duration = "15" if args.quick else "30"
        results["service"] = run_json("service_load.py", ["--sessions", *map(str, levels), "--duration", duration], 3600)
        tables.append(service_table(results["service"]))
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
