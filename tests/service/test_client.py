"""``movinet-client stream`` against a real server, in a subprocess like a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import TEST_LABELS, TEST_MODEL, encode_video, moving_frames

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]


def _client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.client", "stream", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_client_streams_a_file_and_prints_labels(server, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(moving_frames(30, seed=21), fps=15, container="mp4"))
    done = _client(str(video), "--url", server.http, "--model", TEST_MODEL, "--fast", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 10  # 2 s at 5 fps
    assert all(any(name in line for name in TEST_LABELS) for line in lines)
    assert lines[0].split()[0] == "0.00s" and lines[-1].split()[0] == "1.80s"
    assert "sent 10 frames, 10 labels, 0 dropped, 0 errors" in done.stderr


def test_client_sends_in_real_time_by_default(server, tmp_path):
    video = tmp_path / "clip.webm"
    video.write_bytes(encode_video(moving_frames(15, seed=22), fps=15, container="webm"))
    import time

    started = time.monotonic()
    done = _client(str(video), "--url", server.http, "--model", TEST_MODEL)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 5
    assert time.monotonic() - started > 0.8  # 5 frames at 5 fps: 0.8 s of pts


def test_client_reports_a_refused_session(server, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(moving_frames(5), fps=5, container="mp4"))
    done = _client(str(video), "--url", server.http, "--model", "movinet_z9_stream")
    assert done.returncode != 0 and "unknown_model" in done.stderr
