"""``movinet-service`` refuses a configuration it cannot run, with one clear line and exit status 2."""

from __future__ import annotations

import pytest

from service.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker"], "set MOVINET_REDIS_URL"),
        (["gateway"], "set MOVINET_REDIS_URL"),
        (["serve", "--device", "tpu"], "is not a torch device"),
        (["serve", "--device", "cuda:99"], "torch sees no such CUDA device"),
    ],
)
def test_unrunnable_configurations_exit_2_with_the_reason(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("MOVINET_REDIS_URL", raising=False)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_a_bad_setting_exits_2_with_one_line_naming_it_and_never_its_value(capsys, monkeypatch):
    monkeypatch.delenv("MOVINET_REDIS_URL", raising=False)
    monkeypatch.setenv("MOVINET_PORT", "abc")
    monkeypatch.setenv("MOVINET_API_KEYS", "s3cret-key")
    monkeypatch.setenv("MOVINET_MAX_SESSIONS", "-5s3cret")
    assert main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert sorted(line.split(":")[1].strip() for line in lines) == ["MOVINET_MAX_SESSIONS", "MOVINET_PORT"], lines
    assert all(line.startswith("movinet-service serve: MOVINET_") for line in lines)
    assert not any("s3cret" in line or "abc" in line for line in lines), lines
    monkeypatch.delenv("MOVINET_PORT")
    monkeypatch.delenv("MOVINET_MAX_SESSIONS")
    monkeypatch.setenv("MOVINET_WEBRTC_ICE_SERVERS", "[{s3cret")  # a JSON setting that is not JSON
    assert main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["movinet-service serve: MOVINET_WEBRTC_ICE_SERVERS: not valid JSON"], lines


def test_a_port_in_use_exits_1_with_one_line_before_anything_starts(capsys, monkeypatch):
    import socket

    monkeypatch.delenv("MOVINET_REDIS_URL", raising=False)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"movinet-service serve: cannot listen on 127.0.0.1:{port}: address already in use"]


@pytest.mark.parametrize(
    ("env", "args", "expected"),
    [
        ({}, [], "serve --host 0.0.0.0 --port 8000"),  # the documented default of `make serve`
        ({"MOVINET_HOST": "127.0.0.1", "MOVINET_PORT": "8011"}, [], "serve --host 127.0.0.1 --port 8011"),
        ({"HOST": "::1", "PORT": "9000", "MOVINET_PORT": "8011"}, [], "serve --host ::1 --port 9000"),
        ({"MOVINET_PORT": "8011"}, ["PORT=9001"], "serve --host 0.0.0.0 --port 9001"),
    ],
)
def test_make_serve_binds_where_the_environment_says(env, args, expected, tmp_path):
    import os
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("make") is None:
        pytest.skip("no make")
    fake = tmp_path / "movinet-service"  # stands in for the real command: prints its arguments
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "MOVINET_HOST", "MOVINET_PORT")}
    done = subprocess.run(["make", "--no-print-directory", "-s", "-o", ".venv/.installed", "serve",
                           f"BIN={tmp_path}", *args], cwd=Path(__file__).resolve().parents[2],
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
