"""Write a labelled folder of synthetic action videos, for fine-tuning (``python -m model.train --data DIR``).

    python tools/make_pattern_folder.py DIR --set camera --clips-per-class 40 --seed 0 [--seconds 3]
    python tools/make_pattern_folder.py DIR --classes "orbit,pulse,spin" --clips-per-class 20

``DIR/<class>/<class>_NNN.mp4|.webm``: H.264 and VP8 in turn, at 128x96 15 fps, 96x96 10 fps and
160x120 25 fps in turn. ``--set camera`` is the five camera motions the bundled model was not
trained on (diagonal pans and a slow sway: train them with ``--no-flip``), ``--set objects`` the
five object actions; the classes are described in :mod:`model.training.datasets.patterns`, which
renders them. This file only parses and writes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.training.datasets.patterns import (  # noqa: E402
    CAMERA_MOTIONS,
    OBJECT_ACTIONS,
    PATTERNS,
    write_pattern_folder,
)

SETS = {"camera": CAMERA_MOTIONS, "objects": OBJECT_ACTIONS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/make_pattern_folder.py", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="folder to write DIR/<class>/*.mp4|*.webm into")
    parser.add_argument("--set", choices=sorted(SETS), default="camera", help="which five classes")
    parser.add_argument("--classes", default=None, help=f"comma-separated classes instead, from: {', '.join(PATTERNS)}")
    parser.add_argument("--clips-per-class", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each video")
    parser.add_argument("--seed", type=int, default=0, help="a different seed gives different clips")
    args = parser.parse_args(argv)
    classes = SETS[args.set] if args.classes is None else tuple(c.strip() for c in args.classes.split(","))
    unknown = [c for c in classes if c not in PATTERNS]
    if unknown:
        parser.error(f"unknown class(es) {unknown}; choose from {', '.join(PATTERNS)}")
    started = time.time()
    paths = write_pattern_folder(args.out, classes, args.clips_per_class, seed=args.seed, seconds=args.seconds)
    print(f"wrote {len(paths)} videos of {len(classes)} classes to {args.out} in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
