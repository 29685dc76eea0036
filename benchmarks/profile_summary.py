"""Where a process's CPU went, from a py-spy recording (a script, not a test).

    py-spy record -p PID -d 20 -r 100 --threads --nonblocking -f raw -o prof.txt [--gil]
    python benchmarks/profile_summary.py prof.txt [--top 15] [--gil-of 2000]

``benchmarks/service_load.py --profile prof.txt`` records the server during its last level and
prints this summary. The raw format is one collapsed stack per line with its sample count; py-spy
counts only samples where a thread was on the CPU (no ``--idle``), so the shares below are shares of
the process's CPU time: per thread, and per leaf function (the innermost Python frame, where the
time went: a torch call counts as the Python line that made it). Recorded with ``--gil``
(``service_load.py --profile-gil``), only the thread holding the GIL is sampled: the shares are of
the GIL's time, and ``--gil-of`` says how much of the time it was held at all.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

THREAD = re.compile(r"^(?:process \d+:\"[^\"]*\";)?thread \(([0-9A-Fa-fx]+)\)(?::? \"?([^;\"]*)\"?)?")


def parse(path: Path) -> tuple[Counter, Counter, int]:
    threads: Counter = Counter()
    leaves: Counter = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        match = THREAD.match(stack)
        name = (match.group(2) or match.group(1)) if match else "?"
        name = re.sub(r"_\d+$", "", name)  # inference_0, decode_1: one row per pool
        threads[name] += samples
        leaf = frames[-1] if frames else "?"
        leaves[re.sub(r" \(/[^)]*/", " (", leaf)] += samples  # no build-machine paths in the summary
    return threads, leaves, total


def summary(path: Path, top: int = 15, gil_of: float | None = None) -> str:
    """``gil_of``: the recording was made with ``--gil`` (only samples of the thread holding the
    GIL) over this many possible samples (rate x seconds): say how much of the time the GIL was held."""
    threads, leaves, total = parse(path)
    if not total:
        return f"{path}: no samples"
    what = "samples holding the GIL" if gil_of else "samples on the CPU"
    lines = [f"{total} {what}" + (f": the GIL was held {total / gil_of:.0%} of the time" if gil_of else ""),
             "", f"| thread | share of {what} |", "|---|---|"]
    lines += [f"| {name} | {count / total:.0%} |" for name, count in threads.most_common(8)]
    lines += ["", "| innermost frame | share |", "|---|---|"]
    lines += [f"| `{leaf}` | {count / total:.1%} |" for leaf, count in leaves.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--gil-of", type=float, help="recorded with --gil: the samples possible (rate x seconds)")
    args = parser.parse_args(argv)
    print(summary(args.path, args.top, args.gil_of))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
