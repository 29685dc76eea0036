"""Official weights in a deployment: the image's FETCH_WEIGHTS build argument (its RUN line run
here as a local shell command against a local download host) and the Kubernetes overlay
k8s/overlays/official-weights (an init container that fills the cache volume)."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_files import DOCKERFILES, K8S, clean_env, find, kustomize_build
from tests.deploy.test_docker import _stages
from tests.model.io.test_fetch import NAME, official_style_tarball

OVERLAY = K8S / "overlays" / "official-weights"
BAKED = "/opt/movinet/weights"


# --- the image ---------------------------------------------------------------------------------------

def _fetch_run(dockerfile: Path) -> str:
    _, final = _stages(dockerfile)
    assert 'ARG FETCH_WEIGHTS=""' in final
    assert f"ENV MOVINET_WEIGHTS_DIR={BAKED}" in final
    (run,) = [line for line in final if line.startswith("RUN ") and "movinet-service fetch" in line]
    assert final.index('ARG FETCH_WEIGHTS=""') < final.index(run) < final.index("USER ${APP_UID}:${APP_UID}")
    return run.removeprefix("RUN ")


@pytest.fixture()
def download_host(tmp_path: Path):
    www = tmp_path / "www"
    www.mkdir()
    official_style_tarball(www)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_fetch_weights_build_arg_bakes_them_into_the_weights_dir(dockerfile: Path, tmp_path: Path,
                                                                  download_host: str) -> None:
    from service.registry import scan_weights_dir

    command = _fetch_run(dockerfile).replace(BAKED, str(tmp_path / "baked"))
    env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    MOVINET_WEIGHTS_BASE_URL=download_host)
    empty = subprocess.run(["sh", "-c", command], env={**env, "FETCH_WEIGHTS": ""}, capture_output=True,
                           text=True, timeout=120)
    assert empty.returncode == 0 and list((tmp_path / "baked").iterdir()) == [], empty.stderr
    baked = subprocess.run(["sh", "-c", command], env={**env, "FETCH_WEIGHTS": NAME}, capture_output=True,
                           text=True, timeout=300)
    assert baked.returncode == 0, baked.stderr
    assert scan_weights_dir(tmp_path / "baked") == {
        NAME: {"kinetics600": tmp_path / "baked" / f"{NAME}_kinetics600.safetensors"}}
    assert oct((tmp_path / "baked" / f"{NAME}_kinetics600.safetensors").stat().st_mode & 0o777) == "0o644"


# --- Kubernetes ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize_build(OVERLAY)


def test_overlay_changes_the_configmap_and_adds_init_containers_only(overlay) -> None:
    base = kustomize_build(K8S)
    changed = {(doc["kind"], doc["metadata"]["name"]) for doc in overlay if doc not in base}
    assert changed == {("ConfigMap", "movinet-config"), ("Deployment", "movinet-gateway"),
                       ("Deployment", "movinet-worker")}
    for name in ("movinet-gateway", "movinet-worker"):
        ours, theirs = find(overlay, "Deployment", name), find(base, "Deployment", name)
        assert ours["spec"]["template"]["spec"]["containers"] == theirs["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("name", ["movinet-gateway", "movinet-worker"])
def test_init_container_fetches_the_configured_model_into_the_mounted_cache(overlay, name: str) -> None:
    from service.cli import build_parser

    config = find(overlay, "ConfigMap", "movinet-config")["data"]
    assert config["MOVINET_WEIGHTS"] == "kinetics600"
    pod = find(overlay, "Deployment", name)["spec"]["template"]["spec"]
    (main,), (init,) = pod["containers"], pod["initContainers"]
    assert init["command"][0] == "movinet-service" and "args" not in init
    args = build_parser().parse_args(init["command"][1:])
    assert args.command == "fetch" and args.models == [config["MOVINET_MODEL"]]
    assert init["image"] == main["image"] and init["envFrom"] == main["envFrom"]
    mounts = {mount["mountPath"]: mount["name"] for mount in init["volumeMounts"]}
    assert mounts == {mount["mountPath"]: mount["name"] for mount in main["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    cache_mount = next(path for path, volume in mounts.items() if volume == "cache")
    assert "emptyDir" in volumes["cache"]
    assert Path(config["MOVINET_CACHE_DIR"]).is_relative_to(cache_mount)
    assert init["securityContext"] == main["securityContext"]
    assert re.fullmatch(r"\d+Gi", init["resources"]["limits"]["memory"])
