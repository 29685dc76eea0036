"""The deployment files name only what the service has: settings, routes, subcommands.

* Every ``MOVINET_*`` name in docker-compose.yml, .env.example, k8s/ and docker/ is a field of
  ``service.settings.Settings``, and the values given there validate as that field.
* Every path that compose or Kubernetes probes, scrapes or routes to is a route of the app.
* Every command is ``movinet-service serve|gateway|worker`` and parses with the real CLI.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from starlette.routing import Match

from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    DOCKERFILES,
    ENV_EXAMPLE,
    ENV_NAME,
    HEALTHCHECK_SCRIPT,
    K8S,
    KUSTOMIZATIONS,
    ROLES,
    ROOT,
    cli_roles,
    compose_config,
    kustomize_build,
    load_docs,
    parse_role_args,
    pod_templates,
    settings_env_names,
)

SETTINGS = settings_env_names()
FILES = [COMPOSE_FILE, ENV_EXAMPLE, *DOCKERFILES, HEALTHCHECK_SCRIPT, *sorted(K8S.rglob("*.yaml"))]
NAMED = {name for path in FILES for name in ENV_NAME.findall(path.read_text())}
ROLES_HERE = cli_roles()


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return compose_config(tmp_path_factory.mktemp("compose"), "gpu")["services"]


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return [doc for directory in KUSTOMIZATIONS for doc in kustomize_build(directory)]


# --- settings --------------------------------------------------------------------------------------

def test_files_name_settings() -> None:
    assert len(NAMED) >= 10, NAMED
    unknown = NAMED - SETTINGS
    assert not unknown, f"not fields of service.settings.Settings: {sorted(unknown)}"


def _environments(compose: dict[str, Any], k8s: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each process's MOVINET_* environment as the files give it (ConfigMap, then container env)."""
    environments = {f"compose:{name}": dict(service.get("environment") or {})
                    for name, service in compose.items() if name != "redis"}
    configmaps = {doc["metadata"]["name"]: doc["data"] for doc in k8s if doc["kind"] == "ConfigMap"}
    for workload, template in pod_templates(k8s):
        for container in template["spec"]["containers"]:
            environment = {}
            for source in container.get("envFrom", []):
                environment |= configmaps.get(source.get("configMapRef", {}).get("name"), {})
            environment |= {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}
            environments[f"k8s:{workload['metadata']['name']}/{container['name']}"] = environment
    (secret,) = load_docs(K8S / "secret.example.yaml")
    environments["k8s:secret.example.yaml"] = secret["stringData"]
    return environments


def test_values_validate_as_settings(compose, k8s, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    environments = _environments(compose, k8s)
    assert len(environments) >= 5
    for where, environment in environments.items():
        for name in list(os.environ):
            if name.startswith("MOVINET_"):
                monkeypatch.delenv(name)
        for name, value in environment.items():
            if name.startswith("MOVINET_"):
                monkeypatch.setenv(name, str(value))
        try:
            settings = Settings()
        except Exception as exc:  # pydantic's ValidationError names the field and the value
            pytest.fail(f"{where}: {exc}")
        for name, value in environment.items():
            field = name.removeprefix("MOVINET_").lower()
            parsed = getattr(settings, field, None)
            if isinstance(parsed, (str, int, float, bool)):  # lists and JSON: validating was the check
                assert str(parsed).lower() == str(value).lower() or _same_number(parsed, value), (
                    f"{where}: {name}={value!r} read as {parsed!r}")


def _same_number(parsed: Any, text: str) -> bool:
    try:
        return float(parsed) == float(text)
    except (TypeError, ValueError):
        return False


# --- commands --------------------------------------------------------------------------------------

def _commands(compose: dict[str, Any], k8s: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each container's argv after ``movinet-service``."""
    commands = {}
    for name, service in compose.items():
        if name != "redis":
            assert service.get("entrypoint") is None, "the image's ENTRYPOINT is movinet-service"
            commands[f"compose:{name}"] = list(service["command"])
    for workload, template in pod_templates(k8s):
        for container in template["spec"]["containers"]:
            if container["image"].startswith("movinet-service"):
                assert container["command"][0] == "movinet-service", container["command"]
                assert "args" not in container
                commands[f"k8s:{workload['metadata']['name']}"] = container["command"][1:]
    return commands


def test_commands_are_roles(compose, k8s) -> None:
    commands = _commands(compose, k8s)
    assert {argv[0] for argv in commands.values()} == {"gateway", "worker"}
    assert all(argv[0] in ROLES for argv in commands.values())


@pytest.mark.parametrize("role", ROLES)
def test_commands_parse(compose, k8s, role: str) -> None:
    assert role in ROLES_HERE
    for where, argv in _commands(compose, k8s).items():
        if argv[0] == role:
            try:
                parse_role_args(argv)
            except SystemExit:
                pytest.fail(f"{where}: movinet-service {' '.join(argv)} does not parse")


def test_image_default_command_is_a_role() -> None:
    for dockerfile in DOCKERFILES:
        lines = dockerfile.read_text().splitlines()
        assert 'ENTRYPOINT ["movinet-service"]' in lines
        (cmd,) = [line for line in lines if line.startswith("CMD ")]
        assert cmd.split('"')[1] in ROLES


def test_entrypoint_is_the_installed_script() -> None:
    assert 'movinet-service = "service.cli:main"' in (ROOT / "pyproject.toml").read_text().splitlines()


# --- routes ----------------------------------------------------------------------------------------

def _app(role: str | None = None):
    from service.api.app import create_app
    from service.settings import Settings

    if role is None:
        return create_app(Settings())
    return create_app(Settings(redis_url="redis://redis:6379/0"), role=role)


def _has_route(app, path: str, kind: str = "http", method: str = "GET") -> bool:
    scope = {"type": kind, "path": path, "root_path": "", "method": method, "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.routes)


def _probed_paths(compose: dict[str, Any], k8s: list[dict[str, Any]], component: str) -> set[str]:
    paths = set()
    for name, service in compose.items():
        if name.startswith(component):
            paths.add(service["healthcheck"]["test"][3])
    for workload, template in pod_templates(k8s):
        if workload["metadata"]["labels"].get("app.kubernetes.io/component") == component:
            (container,) = template["spec"]["containers"]
            paths |= {container[probe]["httpGet"]["path"]
                      for probe in ("startupProbe", "readinessProbe", "livenessProbe")}
            paths.add(template["metadata"]["annotations"]["prometheus.io/path"])
    return paths


def test_gateway_probes_are_routes(compose, k8s) -> None:
    paths = _probed_paths(compose, k8s, "gateway")
    assert paths == {"/healthz", "/readyz", "/metrics"}
    app = _app()
    for path in paths | {"/"}:  # "/": the web page behind the Ingress and on compose's port 8000
        assert _has_route(app, path), path


def test_gateway_websockets_behind_the_ingress_are_routes() -> None:
    app = _app()
    for path in ("/sessions/abc/stream", "/sessions/abc/labels"):
        assert _has_route(app, path, kind="websocket"), path


def test_webrtc_route_has_its_ingress() -> None:
    app = _app()
    assert _has_route(app, "/sessions/abc/webrtc", method="POST")


def test_worker_probes_are_routes(compose, k8s) -> None:
    paths = _probed_paths(compose, k8s, "worker")
    assert paths == {"/healthz", "/readyz", "/metrics"}
    app = _app("worker")
    for path in paths:
        assert _has_route(app, path), path


def test_healthcheck_script_defaults_match_settings() -> None:
    from service.settings import Settings

    text = HEALTHCHECK_SCRIPT.read_text()
    assert f'os.environ.get("MOVINET_PORT", "{Settings.model_fields["port"].default}")' in text
    assert f'os.environ.get("MOVINET_WORKER_PORT", "{Settings.model_fields["worker_port"].default}")' in text
