"""benchmarks/gpu.py runs end to end on the CPU (--quick): the GPU run is the same code at other sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_cpu_run_prints_the_tables_and_writes_json(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--device", "cpu", "--quick", "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stdout = result.stdout
    assert "| model | size | batch | precision | layout | CUDA graph | frames/s | p50 ms | p99 ms |" in stdout
    assert "fp32/bf16 top-1 agreement" in stdout and "| provider |" in stdout
    report = json.loads(out.read_text())
    stream = report["stream"]
    assert {(row["batch"], row["precision"]) for row in stream} == {(1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")}
    assert all(row["status"] == "ok" and row["frames_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in stream)
    assert all(row["state_mb_per_session"] > 0 for row in stream)
    (agreement,) = report["agreement"]
    assert agreement["status"] == "ok" and 0 <= agreement["top1_agreement"] <= 1
    assert report["onnxruntime"] and all(row["status"] == "ok" for row in report["onnxruntime"])
    assert report["onnxruntime"][0]["provider"] == "CPUExecutionProvider"
    for row in stream:
        assert f"| {row['model']} | {row['size']} | {row['batch']} | {row['precision']} |" in stdout
