"""The README's shell commands run as written, against a server started the README's way.

Every ```bash block of README.md is one script (its variables carry from line to line), run by
bash with ``set -e`` from a scratch folder that links to the repository's files (what a command
writes stays there), with the server this test starts by ``make serve`` (``MOVINET_PORT`` set)
in place of the README's own ``make serve`` lines. Port 8000 is replaced by that server's port;
a block that starts a pool of its own (Redis, a gateway, workers) gets free ports for all of them.
Lines that cannot run here are left out by the explicit lists below, and every line, run or left
out, is printed with what happened to it. Background commands (``&``) are ended with their block.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.deploy_files import ROOT

pytestmark = pytest.mark.slow

README = ROOT / "README.md"

# A command that contains one of these is left out, for this reason.
LEFT_OUT = {
    "make test": "the whole test suite (this test is part of it)",
    "model.convert movinet_a0_stream/": "needs an official checkpoint tarball, downloaded and unpacked",
    "model.weights fetch": "downloads the official weights (no network here)",
    "weights='kinetics600'": "downloads the official weights (no network here)",
    "--weights kinetics600": "downloads the official weights at startup (no network here)",
    "movinet-service fetch": "downloads the official weights (no network here)",
    "docker build": "needs a Docker engine (tests/deploy/test_official_weights.py runs its FETCH_WEIGHTS step)",
    "model.train ": "trains for about 40 minutes",
    "model.evaluate --weights runs/": "needs the weights that the training line writes",
    "docker compose": "needs a Docker engine (tests/deploy/test_compose.py checks the file)",
    "kubectl": "needs a Kubernetes cluster (tests/deploy/test_k8s.py checks the manifests)",
}
# Commands that start the service: the server this test started stands in for them.
SERVER_COMMAND = re.compile(r"^(\S+=\S+ )*make serve\b")
# Commands that run until they are stopped (Ctrl-C): run this many seconds, then stopped.
RUNS_UNTIL_STOPPED = {"movinet-client watch": 10.0}
# What a block needs that is not a Python package, with the check.
NEEDS_GST = "rtsp_server.py"
BLOCK_TIMEOUT_S = 300


def bash_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks as lists of commands (continuation lines joined, comment lines dropped)."""
    blocks = []
    for body in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S):
        commands, current = [], ""
        for line in body.splitlines():
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                commands.append(current.strip())
                current = ""
        blocks.append(commands)
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: none of the service's settings, nor HOST/PORT."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MOVINET_") and k not in ("HOST", "PORT")}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch folder whose entries link to the repository's (so files the commands write land here)."""
    work = tmp_path_factory.mktemp("readme")
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (work / entry.name).symlink_to(entry)
    return work


@pytest.fixture(scope="module")
def make_serve(workdir: Path) -> Iterator[int]:
    """``make serve`` as the README says, on a free port chosen with MOVINET_PORT."""
    port = free_port()
    env = {**clean_env(), "MOVINET_HOST": "127.0.0.1", "MOVINET_PORT": str(port),
           "MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES": "true"}  # the RTSP example's setting
    log = (workdir / "make-serve.log").open("w")
    # -o: an outdated install stamp must not reinstall here (make test, which runs this, installed)
    server = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "serve"], cwd=workdir, env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"make serve did not come up on port {port}: "
                                   f"{(workdir / 'make-serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
        print(f"make serve (MOVINET_PORT={port}) is ready on 127.0.0.1:{port}")
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


def kill_group(pid: int, sig: int) -> bool:
    """Signal a block's process group (the processes it left running); False when none is left."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False


def gst_rtsp_available() -> bool:
    from tests.service.sources import gst_rtsp_available as available

    return available()


def script_for(commands: list[str], ports: dict[int, int]) -> tuple[str, list[str]]:
    """The bash script of one block, and a line for each command saying what happens to it."""
    lines = ["set -eEuo pipefail", "trap 'echo \"README command failed ($?): $BASH_COMMAND\" >&2' ERR"]
    notes = []
    for command in commands:
        for old, new in ports.items():
            command = re.sub(rf"\b{old}\b", str(new), command)
        reason = next((why for key, why in LEFT_OUT.items() if key in command), None)
        if reason:
            notes.append(f"  left out: {command}\n            ({reason})")
            continue
        if SERVER_COMMAND.match(command):
            notes.append(f"  server:   {command}\n            (the `make serve` this test started stands in)")
            continue
        limit = next((s for key, s in RUNS_UNTIL_STOPPED.items() if key in command), None)
        if limit is not None:  # still running after `limit` s is success (timeout's status 124)
            notes.append(f"  run {limit:g} s: {command}")
            lines.append(f"status=0; timeout -s INT {limit:g} {command.split('  #')[0]} || status=$?; "
                         "[ $status -eq 0 ] || [ $status -eq 124 ]")
            continue
        notes.append(f"  run:      {command}")
        lines.append(command)
    return "\n".join(lines) + "\n", notes


def test_the_readme_commands_run(workdir: Path, make_serve: int) -> None:
    blocks = bash_blocks(README.read_text())
    assert len(blocks) >= 6, "the README's bash blocks were not found"
    has_gst = gst_rtsp_available()
    failures = []
    for number, commands in enumerate(blocks, 1):
        pool = any("movinet-service gateway" in c for c in commands)
        ports = {p: free_port() for p in (8000, 8001, 8002, 6379)} if pool else {8000: make_serve, 8554: free_port()}
        script, notes = script_for(commands, ports)
        print(f"README block {number}:" + ("  (a pool of its own: ports " + ", ".join(
            f"{a}->{b}" for a, b in ports.items()) + ")" if pool else ""))
        print("\n".join(notes))
        if NEEDS_GST in script and not has_gst:
            if os.environ.get("CI"):
                failures.append(f"block {number}: gst-rtsp-server is missing (.ci/run installs it)")
            print("  (block left out: gst-rtsp-server is not installed here)")
            continue
        if script.count("\n") <= 2:
            continue  # nothing of this block runs here
        path = workdir / f"block{number}.sh"
        path.write_text(script)
        log_path = workdir / f"block{number}.log"
        with log_path.open("w") as log:
            started = time.monotonic()
            block = subprocess.Popen(["bash", str(path)], cwd=workdir, env=clean_env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = block.wait(BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                code = "timeout"
            finally:  # the block's background commands too
                if kill_group(block.pid, signal.SIGTERM):
                    time.sleep(1.0)
                    kill_group(block.pid, signal.SIGKILL)
        output = log_path.read_text()
        print(f"  -> exit {code} in {time.monotonic() - started:.0f} s")
        if code != 0:
            failures.append(f"block {number} exited {code}:\n{output[-3000:]}")
        elif "movinet-client watch" in script and not re.search(r"\d\.\d\ds\s+#\d+", output):
            failures.append(f"block {number}: the labels socket showed no label:\n{output[-3000:]}")
    assert not failures, "\n\n".join(failures)
    shutil.rmtree(workdir / "runs", ignore_errors=True)


def test_make_serve_on_a_port_in_use_says_so_in_one_line(workdir: Path, make_serve: int) -> None:
    env = {**clean_env(), "MOVINET_HOST": "127.0.0.1", "MOVINET_PORT": str(make_serve)}
    done = subprocess.run(["make", "-s", "-o", ".venv/.installed", "serve"], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    ours = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("make")]
    assert ours == [f"movinet-service serve: cannot listen on 127.0.0.1:{make_serve}: address already in use"]
