"""The image files: Dockerfiles' stages and user, the build context, the health check script."""

from __future__ import annotations

import http.server
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.deploy_files import DOCKERFILES, HEALTHCHECK_SCRIPT, ROOT

CPU, CUDA = DOCKERFILES


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_multi_stage_with_a_slim_non_root_final_stage(dockerfile: Path) -> None:
    builder, final = _stages(dockerfile)
    assert builder[0].endswith(" AS builder")
    assert any("build-essential" in line for line in builder)
    assert not any("build-essential" in line or "apt-get install" in line for line in final)
    assert "COPY --from=builder /opt/venv /opt/venv" in final
    (user,) = [line for line in final if line.startswith("USER ")]
    assert user == "USER ${APP_UID}:${APP_UID}" and "ARG APP_UID=10001" in final
    assert any(line.startswith("HEALTHCHECK ") and "/healthz" in line for line in final)
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert "HOME=/home/app" in env  # Kubernetes mounts the writable ~/.cache there
    assert "MOVINET_HOST=0.0.0.0" in env
    assert final[-2:][0] == 'ENTRYPOINT ["movinet-service"]'


def test_cpu_image_installs_the_cpu_torch_wheel() -> None:
    builder, _ = _stages(CPU)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in builder
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    assert f"ARG TORCH_VERSION={pinned}" in builder


def test_cuda_image_uses_a_pytorch_cuda_base_with_the_same_torch() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"torch==([^"]+)"', pyproject).group(1)
    (arg,) = [line for line in CUDA.read_text().splitlines() if line.startswith("ARG CUDA_IMAGE=")]
    assert arg.startswith(f"ARG CUDA_IMAGE=pytorch/pytorch:{pinned}-cuda")


def test_install_is_not_editable_and_ships_the_weights() -> None:
    for dockerfile in DOCKERFILES:
        builder, _ = _stages(dockerfile)
        assert any('pip install --no-cache-dir "./[service]"' in line for line in builder)
        assert not any(" -e " in line for line in builder)
    assert 'model = ["labels/*.txt", "weights/*.safetensors"]' in (ROOT / "pyproject.toml").read_text()
    assert list((ROOT / "model" / "weights").glob("*.safetensors"))


# --- build context ---------------------------------------------------------------------------------

def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_image_copies_and_nothing_heavy_or_secret() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = {source for dockerfile in DOCKERFILES for line in _stages(dockerfile)[0] + _stages(dockerfile)[1]
              if line.startswith("COPY ") and "--from" not in line for source in line.split()[1:-1]}
    assert copied == {"pyproject.toml", "README.md", "model", "service", "docker/healthcheck.py"}
    needed = copied | {"model/weights/movinet_a0_stream_motion.safetensors", "service/static/index.html",
                       "service/cli.py"}
    for path in needed:
        assert not _dockerignore_excludes(path, patterns), path
    for path in (".venv", ".venv/bin/python", "runs/motion/x.safetensors", ".git/HEAD", "tests/model",
                 ".env", ".pytest_cache/v", "model/__pycache__/specs.cpython-311.pyc", "service/x.pyc",
                 "movinet_service.egg-info/PKG-INFO", "k8s/base/gateway.yaml", "docker-compose.yml"):
        assert _dockerignore_excludes(path, patterns), path


# --- the health check script -----------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthcheck(*args: object, env: dict[str, str] | None = None) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT), *map(str, args)], env=env,
                          capture_output=True, timeout=30).returncode


def test_healthcheck_passes_on_200_and_fails_on_503(server_port: int) -> None:
    assert _healthcheck("/healthz", server_port) == 0
    assert _healthcheck("/readyz", server_port) == 1


def test_healthcheck_tries_the_worker_port_when_no_gateway_listens(server_port: int) -> None:
    env = {"MOVINET_PORT": str(_free_port()), "MOVINET_WORKER_PORT": str(server_port), "PATH": "/usr/bin:/bin"}
    assert _healthcheck(env=env) == 0
    env["MOVINET_WORKER_PORT"] = str(_free_port())
    assert _healthcheck(env=env) == 1
