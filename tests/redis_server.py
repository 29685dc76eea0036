"""A private ``redis-server`` for tests: a free port, a temporary directory, kill and restart.

Tests never touch a Redis they did not start (the machine's own one included). ``.ci/run``
installs ``redis-server`` when it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, port: int | None = None, appendonly: bool = False) -> None:
        """``appendonly``: persist every write before answering (AOF, fsync always), so that a
        SIGKILLed server restarts with everything it acknowledged."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does it)")
        self.binary = binary
        self.directory = directory
        self.port = port or free_port()
        self.chosen_here = port is None  # may move to another port until it first starts
        self.appendonly = appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start and wait for PONG. A port the kernel picked (``free_port``) is free when picked
        but may be given to another socket before ``redis-server`` binds it: then, on a first
        start only, try once more on another port (a restart keeps its port, the URL is known)."""
        for attempt in range(3):
            try:
                return self._start_once()
            except ServerExited:
                if not self.chosen_here or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start_once(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--protected-mode", "yes"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerExited(f"redis-server exited ({self.process.returncode}) on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        self.chosen_here = False
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, like a crashed or evicted Redis."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)


class ServerExited(RuntimeError):
    """``redis-server`` exited before answering (most often: its port was bound meanwhile)."""
