"""``tools/make_test_video.py`` as a user runs it: it says what it wrote, with sizes and durations."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_it_prints_each_file_it_wrote(tmp_path):
    video, y4m = tmp_path / "clip.mp4", tmp_path / "clip.y4m"
    done = subprocess.run([sys.executable, "tools/make_test_video.py", str(video), "--segments",
                           "pan left:1,zoom in:0.6", "--size", "96x64", "--y4m", str(y4m)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, lines
    truth_path = video.with_suffix(".json")
    for line, path, what in zip(lines, (video, y4m, truth_path), ("H.264", "raw yuv420p", "ground truth")):
        assert line.startswith(f"wrote {path}  {what}, "), line
        assert path.is_file()
    for line in lines[:2]:
        assert "96x64, 1.60 s at 25 fps (40 frames)" in line, line
    assert "2 segments (pan left 0.00-1.00 s, zoom in 1.00-1.60 s)" in lines[2]
    sizes = [re.search(r", ([\d.]+) (B|KiB|MiB)$", line) for line in lines]
    assert all(sizes), lines
    assert float(sizes[1].group(1)) == round(y4m.stat().st_size / 1024, 1) and sizes[1].group(2) == "KiB"
    assert json.loads(truth_path.read_text())["num_frames"] == 40
