"""The deployment files through their own validators: hadolint, Docker Compose, kubernetes-validate.

Each validator also gets one known-bad input first, so that a tool that stopped reporting errors
(a wrapper that drops the exit status, a missing schema) fails these tests instead of passing them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    DOCKERFILES,
    K8S,
    K8S_EXAMPLES,
    KUSTOMIZATIONS,
    ROOT,
    clean_env,
    compose_binary,
    dump_docs,
    hadolint,
    key,
    kubernetes_validate,
    kustomization_files,
    kustomize_build,
    load_docs,
    run,
)

# Kinds without a schema in kubernetes-validate (CRDs): checked structurally in test_k8s.py.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def _manifests() -> list[Path]:
    return sorted(path for path in K8S.rglob("*.yaml") if path.name != "kustomization.yaml"
                  and isinstance(load_docs(path)[0], dict))


def _assert_valid(result, paths) -> None:
    """kubernetes-validate passed, and its only warnings are about the known custom kinds."""
    assert result.returncode == 0, f"kubernetes-validate --strict failed:\n{result.stdout}{result.stderr}"
    custom = "|".join(re.escape(kind) for _, kind in CUSTOM_KINDS)
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith(("WARN", "ERROR")):
            assert re.search(rf"Couldn't find schema for kind ({custom}) ", line), line
    for path in paths:
        assert f"{path} passed" in result.stdout or all(
            (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS for doc in load_docs(path)), f"{path} not validated"


# --- hadolint --------------------------------------------------------------------------------------

def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    assert run([hadolint(), "--no-color", bad]).returncode != 0


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_hadolint(dockerfile: Path) -> None:
    result = run([hadolint(), "--no-color", "--failure-threshold", "info", dockerfile], cwd=ROOT)
    assert result.returncode == 0, f"hadolint {dockerfile.name}:\n{result.stdout}{result.stderr}"


# --- docker compose --------------------------------------------------------------------------------

def test_compose_binary_reports_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  web:\n    image: nginx\n    restart: sometimes\n    bogus_key: 1\n")
    result = run([compose_binary(), "-f", bad, "config", "--quiet"], cwd=tmp_path, env=clean_env())
    assert result.returncode != 0, result.stdout


@pytest.mark.parametrize("profiles", [[], ["gpu"]], ids=["default", "gpu"])
def test_compose_config(profiles: list[str]) -> None:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    # In the repository itself (real build contexts), without a .env, as on a fresh clone.
    result = run([compose_binary(), "-f", COMPOSE_FILE, "--project-directory", ROOT, "--env-file", "/dev/null",
                  *args, "config", "--quiet"], cwd=ROOT, env=clean_env())
    assert result.returncode == 0, f"docker compose config:\n{result.stderr}"
    assert not result.stderr.strip(), f"docker compose config warned:\n{result.stderr}"


# --- kubernetes-validate ---------------------------------------------------------------------------

def test_kubernetes_validate_reports_a_bad_manifest(tmp_path: Path) -> None:
    bad = dump_docs([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": 1}},
                      "data": {"a": "b"}, "bogus": True}], tmp_path / "bad.yaml")
    assert kubernetes_validate([bad]).returncode != 0


def test_every_manifest_validates_strictly() -> None:
    manifests = _manifests()
    assert len(manifests) >= 8
    _assert_valid(kubernetes_validate(manifests), manifests)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(K8S)) or "k8s")
def test_kustomize_output_validates_strictly(directory: Path, tmp_path: Path) -> None:
    built = dump_docs(kustomize_build(directory), tmp_path / "built.yaml")
    result = kubernetes_validate([built])
    _assert_valid(result, [])
    assert result.stdout.count(f"{built} passed") >= 14, result.stdout


def test_every_manifest_file_is_built() -> None:
    """Each YAML file under k8s/ is a kustomization, one of its resources or patches, or an example."""
    used = set().union(*(kustomization_files(directory) for directory in KUSTOMIZATIONS))
    stray = {path for path in K8S.rglob("*.yaml")} - used - K8S_EXAMPLES
    assert not stray, f"not in any kustomization.yaml: {sorted(map(str, stray))}"
    assert not (K8S_EXAMPLES & used), "an example manifest (placeholder values) is applied"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: str(path.relative_to(K8S)) or "k8s")
def test_kustomize_build_matches_kubectl(directory: Path) -> None:
    """The test's own build agrees with the real kustomize where one is installed."""
    result = run(["kubectl", "kustomize", directory])
    assert result.returncode == 0, result.stderr
    import yaml

    real = {key(doc): doc for doc in yaml.safe_load_all(result.stdout) if doc}
    ours = {key(doc): doc for doc in kustomize_build(directory)}
    assert sorted(real) == sorted(ours)
    for name, doc in ours.items():
        assert doc == real[name], f"{name} differs from kubectl kustomize"
