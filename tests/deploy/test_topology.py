"""The deployment's topology as local processes: the exact commands and environment that
docker-compose.yml and the Kubernetes manifests give the gateway and worker containers, read
from those files (not copied), with only the addresses remapped to this machine (a private
redis-server, free loopback ports). Two gateways and two workers (one of each from compose, one
of each from k8s); test videos stream through both gateways; a worker and a gateway are
SIGKILLed; the labels must be those of an uninterrupted run and match the video's motions."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_files import DOCKERFILES, K8S, compose_config, find, kustomize_build
from tests.pool.conftest import (
    Pool,
    Proc,
    assert_same_labels,
    results_of,
    stream_frames,
    video_frames,
    ws_url,
)
from tests.redis_server import RedisServer, free_port

FRAMES = 40
# The deployment's own backlog limit (MOVINET_MAX_BACKLOG, default 8) applies here: the clients
# keep fewer frames than that in flight, so that nothing is dropped and runs can be compared.


def _entrypoint() -> list[str]:
    """The image's ENTRYPOINT (exec form), e.g. ``["movinet-service"]``."""
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILES[0].read_text(), re.MULTILINE)
    assert match, "docker/Dockerfile has no exec-form ENTRYPOINT"
    return json.loads(match.group(1))


def _local(argv: list[str]) -> list[str]:
    """The container's argv with the program resolved in this venv."""
    program = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or shutil.which(argv[0])
    assert program, f"{argv[0]} is not installed here"
    return [program, *argv[1:]]


def _remap(argv: list[str], env: dict[str, str], role: str, redis_url: str) -> tuple[list[str], dict[str, str], int]:
    """Point the process at this machine: the test's Redis, loopback, a free port."""
    port = free_port()
    argv = list(argv)
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
    env = dict(env)
    env["MOVINET_REDIS_URL"] = redis_url
    if role == "worker":
        env["MOVINET_WORKER_HOST"], env["MOVINET_WORKER_PORT"] = "127.0.0.1", str(port)
    else:
        env["MOVINET_HOST"], env["MOVINET_PORT"] = "127.0.0.1", str(port)
    return argv, env, port


def compose_commands(tmp_path: Path) -> dict[str, tuple[list[str], dict[str, str]]]:
    config = compose_config(tmp_path / "compose")
    out = {}
    for role in ("gateway", "worker"):
        service = config["services"][role]
        argv = (service.get("entrypoint") or _entrypoint()) + service["command"]
        out[role] = (argv, {k: str(v) for k, v in (service.get("environment") or {}).items()})
    return out


def k8s_commands() -> dict[str, tuple[list[str], dict[str, str]]]:
    docs = kustomize_build(K8S)
    config = find(docs, "ConfigMap", "movinet-config")["data"]
    out = {}
    for role in ("gateway", "worker"):
        deployment = find(docs, "Deployment", f"movinet-{role}")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        argv = (container.get("command") or _entrypoint()) + container.get("args", [])
        env = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(config)
        env.update({item["name"]: str(item["value"]) for item in container.get("env", []) if "value" in item})
        out[role] = (argv, env)
    return out


def _start(pool: Pool, role: str, argv: list[str], env: dict[str, str]) -> Proc:
    import os

    argv, env, port = _remap(argv, env, role, pool.redis.url)
    group = pool.gateways if role == "gateway" else pool.workers
    proc = Proc(role, port, _local(argv), {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env},
                pool.directory / f"{role}{len(group)}.log")
    group.append(proc)
    return proc.start()


@pytest.fixture
def topology(tmp_path: Path):
    redis = RedisServer(tmp_path / "redis").start()
    pool = Pool(redis, tmp_path)
    yield pool
    pool.stop()
    redis.kill()


def test_the_deployed_commands_run_the_pool_and_survive_kills(topology: Pool, tmp_path: Path):
    compose, k8s = compose_commands(tmp_path), k8s_commands()
    for commands in (compose, k8s):
        assert commands["gateway"][0][:2] == ["movinet-service", "gateway"], commands["gateway"][0]
        assert commands["worker"][0][:2] == ["movinet-service", "worker"], commands["worker"][0]
    gateways = [_start(topology, "gateway", *compose["gateway"]), _start(topology, "gateway", *k8s["gateway"])]
    workers = [_start(topology, "worker", *compose["worker"]), _start(topology, "worker", *k8s["worker"])]
    for proc in gateways + workers:
        proc.wait_ready()

    frames = video_frames(FRAMES)
    reference = results_of(asyncio.run(stream_frames(gateways[0], topology.create(gateways[0]), frames, in_flight=4)))
    truth = json.loads((Path(__file__).resolve().parents[1] / "assets" / "motion_test.json").read_text())
    names = [r["labels"][0]["name"] for r in reference]
    segments = [s["name"] for s in truth["segments"] if s["start_s"] < FRAMES / 5]
    assert set(segments) <= set(names), (segments, sorted(set(names)))  # real labels: both motions show up

    sessions = [topology.create(gateways[0]), topology.create(gateways[1])]
    seen: dict[int, list[dict[str, Any]]] = {0: [], 1: []}

    async def run() -> None:
        half = FRAMES // 2

        async def first_half(i: int) -> None:
            seen[i] += results_of(await stream_frames(gateways[i], sessions[i], frames[:half], in_flight=4))

        await asyncio.gather(first_half(0), first_half(1))
        workers[0].kill()   # the compose worker dies: its sessions move to the k8s worker
        gateways[1].kill()  # the k8s gateway dies: its client goes on through the compose gateway

        async def second_half(i: int) -> None:
            seen[i] += results_of(await stream_frames(gateways[0], sessions[i], frames[half:], in_flight=4))

        await asyncio.gather(second_half(0), second_half(1))

    asyncio.run(run())
    for i in (0, 1):
        assert_same_labels(seen[i], reference)
    assert workers[1].alive() and gateways[0].alive()
    assert ws_url(gateways[0], sessions[0]).startswith("ws://127.0.0.1:")
