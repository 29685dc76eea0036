"""``movinet-service serve`` as a subprocess: the real command line, its real logging, raw sockets.

The in-process servers of ``conftest`` share the test's logging and event loop; the tests of
logging and of connection handling need the process exactly as it ships.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.service.conftest import TEST_MODEL, TEST_WEIGHTS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CliServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def connect(self, timeout: float = 10.0) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        sock.settimeout(timeout)
        return sock


def _command() -> list[str]:
    script = Path(sys.executable).with_name("movinet-service")
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


@contextmanager
def cli_server(log_path: Path, *args: str, **env: str) -> Iterator[CliServer]:
    """``movinet-service serve`` on a free loopback port with the plumbing model; stdout and
    stderr go to ``log_path``. ``env``: ``MOVINET_*`` settings."""
    port = free_port()
    argv = [*_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--model", TEST_MODEL,
            "--weights", TEST_WEIGHTS, "--torch-threads", "1", *args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    handle = CliServer(process, port, log_path)
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"movinet-service exited {process.returncode}: {log_path.read_text()[-3000:]}")
            try:
                if httpx.get(handle.http + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"movinet-service not ready: {log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
