"""docker-compose.yml as Docker Compose itself resolves it (``docker compose config``).

Redis persists and is healthy before the service starts; the gateway publishes the web page's
port; two workers; every service restarts and has a health check; the drain fits the stop grace
period; the GPU worker exists only in the ``gpu`` profile and reserves an NVIDIA device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_files import COMPOSE_FILE, ENV_EXAMPLE, ROOT, compose_config, duration_s

SERVICE_ROLES = {"gateway": "gateway", "worker": "worker", "worker-gpu": "worker"}


@pytest.fixture(scope="module")
def default(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"))["services"]


@pytest.fixture(scope="module")
def with_gpu(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose-gpu"), "gpu")["services"]


def test_services(default, with_gpu) -> None:
    assert set(default) == {"redis", "gateway", "worker"}
    assert set(with_gpu) == {"redis", "gateway", "worker", "worker-gpu"}


def test_one_image_for_every_role(default, with_gpu) -> None:
    assert default["gateway"]["image"] == default["worker"]["image"]
    raw = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name in SERVICE_ROLES:
        dockerfile = with_gpu[name]["build"]["dockerfile"]
        assert (ROOT / dockerfile).is_file(), dockerfile
        assert raw[name]["build"]["context"] == "."
    assert with_gpu["worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert default["worker"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_redis_persists(default) -> None:
    redis = default["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    (volume,) = redis["volumes"]
    assert volume["type"] == "volume" and volume["target"] == "/data"


def test_gateway_publishes_the_web_page(default) -> None:
    (port,) = default["gateway"]["ports"]
    command = default["gateway"]["command"]
    assert port["target"] == int(command[command.index("--port") + 1]) == 8000
    assert port["published"] == "8000"  # GATEWAY_PORT in .env.example


def test_two_workers_not_published(default) -> None:
    assert default["worker"]["deploy"]["replicas"] == 2
    assert "ports" not in default["worker"]


def test_gpu_profile_reserves_an_nvidia_device(with_gpu) -> None:
    (device,) = with_gpu["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1


@pytest.mark.parametrize("name", ["redis", *SERVICE_ROLES])
def test_restart_and_healthcheck(with_gpu, name: str) -> None:
    service = with_gpu[name]
    assert service["restart"] == "unless-stopped"
    assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


@pytest.mark.parametrize("name", list(SERVICE_ROLES))
def test_starts_after_redis_is_healthy(with_gpu, name: str) -> None:
    assert with_gpu[name]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", list(SERVICE_ROLES))
def test_healthcheck_probes_the_role_port(with_gpu, name: str) -> None:
    service = with_gpu[name]
    test = service["healthcheck"]["test"]
    assert test[1:3] == ["python", "/usr/local/bin/movinet-healthcheck"]
    path, port = test[3], int(test[4])
    assert path == "/readyz"
    if SERVICE_ROLES[name] == "gateway":
        command = service["command"]
        assert port == int(command[command.index("--port") + 1])
    else:
        assert port == int(service["environment"]["MOVINET_WORKER_PORT"])


@pytest.mark.parametrize("name", list(SERVICE_ROLES))
def test_stop_grace_covers_the_drain(with_gpu, name: str) -> None:
    service = with_gpu[name]
    assert service["init"] is True  # SIGTERM reaches the server through a real PID 1
    drain = float(service["environment"]["MOVINET_DRAIN_TIMEOUT_S"])
    assert duration_s(service["stop_grace_period"]) >= drain + 5


@pytest.mark.parametrize("name", list(SERVICE_ROLES))
def test_read_only_with_writable_tmp_and_cache(with_gpu, name: str) -> None:
    service = with_gpu[name]
    assert service["read_only"] is True and "/tmp" in service["tmpfs"]
    assert "/home/app/.cache" in [volume["target"] for volume in service["volumes"]]


def test_env_example_is_read_and_has_no_secrets(default) -> None:
    values = _env_file(ENV_EXAMPLE)
    assert values["MOVINET_API_KEYS"] == ""
    for name in ("gateway", "worker"):
        environment = default[name]["environment"]
        # .env (here .env.example) reaches the service; the compose file's own values win.
        assert environment["MOVINET_LOG_LEVEL"] == values["MOVINET_LOG_LEVEL"]
        assert environment["MOVINET_REDIS_URL"] == "redis://redis:6379/0"


def test_env_file_is_never_committed_nor_in_the_image() -> None:
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def _env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and name == name.strip() and name.isidentifier(), f"bad line {line!r}"
            values[name] = value
    return values
