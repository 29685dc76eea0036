"""The Kubernetes manifests agree with each other and with the service: what the validators cannot see.

Checked on the kustomize output (k8s/ and k8s/overlays/gpu): selectors select, ports resolve,
probes and drain bounds fit the settings, every pod is locked down, Redis is reachable only from
gateway and worker pods, and the KEDA ScaledObject is well formed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.deploy_files import (
    K8S,
    dump_docs,
    find,
    kubernetes_validate,
    kustomize_build,
    load_docs,
    pod_templates,
    selects,
)

GATEWAY, WORKER, REDIS = "movinet-gateway", "movinet-worker", "redis"
DRAIN_MARGIN_S = 5


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return kustomize_build(K8S)


@pytest.fixture(scope="module")
def gpu() -> list[dict[str, Any]]:
    return kustomize_build(K8S / "overlays" / "gpu")


@pytest.fixture(scope="module")
def config(base) -> dict[str, str]:
    return find(base, "ConfigMap", "movinet-config")["data"]


def _container(docs, kind: str, name: str) -> dict[str, Any]:
    (container,) = find(docs, kind, name)["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a container port name) as a number."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]], port
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return number


def _prestop_s(container: dict[str, Any]) -> float:
    hook = container.get("lifecycle", {}).get("preStop")
    if not hook:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, f"preStop {command}: only a sleep is budgeted here"
    return float(command[1])


# --- namespace, labels, images -------------------------------------------------------------------

def test_everything_in_one_namespace(base, gpu) -> None:
    for doc in base + gpu:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "movinet"
        else:
            assert doc["metadata"]["namespace"] == "movinet", doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "movinet"


def test_images(base, gpu) -> None:
    assert _container(base, "Deployment", GATEWAY)["image"] == "movinet-service:0.1.0"
    assert _container(base, "Deployment", WORKER)["image"] == "movinet-service:0.1.0"
    assert _container(gpu, "Deployment", GATEWAY)["image"] == "movinet-service:0.1.0"
    assert _container(gpu, "Deployment", WORKER)["image"] == "movinet-service:0.1.0-cuda"
    assert _container(base, "StatefulSet", REDIS)["image"].startswith("redis:7")


def test_gpu_overlay_gives_workers_a_gpu_and_nothing_else(base, gpu) -> None:
    worker = _container(gpu, "Deployment", WORKER)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in _container(base, "Deployment", WORKER)["resources"].get("limits", {})
    tolerations = find(gpu, "Deployment", WORKER)["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    changed = {(doc["kind"], doc["metadata"]["name"]) for doc in gpu if doc not in base}
    assert changed == {("Deployment", WORKER)}


# --- selectors -------------------------------------------------------------------------------------

def test_workload_selectors_match_their_pods(base) -> None:
    for workload, template in pod_templates(base):
        assert selects(workload["spec"]["selector"], template["metadata"]["labels"]), workload["metadata"]["name"]


@pytest.mark.parametrize("kind", ["Service", "PodDisruptionBudget"])
def test_selectors_select_exactly_one_workload(base, kind: str) -> None:
    for doc in (doc for doc in base if doc["kind"] == kind):
        selector = doc["spec"]["selector"]
        selector = selector if "matchLabels" in selector else {"matchLabels": selector}
        chosen = [w["metadata"]["name"] for w, template in pod_templates(base)
                  if selects(selector, template["metadata"]["labels"])]
        assert len(chosen) == 1, f"{kind}/{doc['metadata']['name']} selects {chosen}"


def test_service_ports_resolve(base) -> None:
    for service in (doc for doc in base if doc["kind"] == "Service"):
        (workload,) = [w for w, template in pod_templates(base)
                       if selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])]
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            _port(container, port["targetPort"])


def test_ingress_backends_exist(base) -> None:
    ingresses = [doc for doc in base if doc["kind"] == "Ingress"]
    assert {doc["metadata"]["name"] for doc in ingresses} == {GATEWAY, f"{GATEWAY}-webrtc"}
    for ingress in ingresses:
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = find(base, "Service", backend["name"])
                assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]


def test_ingress_websocket_timeouts_and_affinity_only_for_webrtc(base) -> None:
    main, webrtc = find(base, "Ingress", GATEWAY), find(base, "Ingress", f"{GATEWAY}-webrtc")
    notes = main["metadata"]["annotations"]
    # nginx's 60 s default would cut idle label sockets; an hour is the floor here.
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert not any("affinity" in name or "hash" in name for name in notes)
    assert webrtc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$uri"
    (path,) = webrtc["spec"]["rules"][0]["http"]["paths"]
    assert re.fullmatch(path["path"], "/sessions/abc123/webrtc")
    assert not re.fullmatch(path["path"], "/sessions/abc123/stream")
    assert find(base, "Service", GATEWAY)["spec"]["sessionAffinity"] == "None"


def test_public_url_is_the_ingress_host(base, config) -> None:
    hosts = {rule["host"] for doc in base if doc["kind"] == "Ingress" for rule in doc["spec"]["rules"]}
    tls_hosts = {host for doc in base if doc["kind"] == "Ingress" for tls in doc["spec"]["tls"] for host in tls["hosts"]}
    url = urlsplit(config["MOVINET_PUBLIC_URL"])
    assert hosts == tls_hosts == {url.hostname} and url.scheme == "https"


# --- gateway and worker pods -----------------------------------------------------------------------

def test_gateway_command_port_and_probes(base) -> None:
    container = _container(base, "Deployment", GATEWAY)
    command = container["command"]
    assert command[:2] == ["movinet-service", "gateway"]
    port = int(command[command.index("--port") + 1])
    assert command[command.index("--host") + 1] == "0.0.0.0"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _port(container, container[probe]["httpGet"]["port"]) == port, probe
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    annotations = find(base, "Deployment", GATEWAY)["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port


def test_worker_command_port_and_probes(base, config) -> None:
    container = _container(base, "Deployment", WORKER)
    assert container["command"] == ["movinet-service", "worker"]
    port = int(config["MOVINET_WORKER_PORT"])
    assert "MOVINET_WORKER_PORT" not in {e["name"] for e in container.get("env", [])}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _port(container, container[probe]["httpGet"]["port"]) == port, probe
        assert container[probe]["httpGet"]["path"] in ("/healthz", "/readyz")
    annotations = find(base, "Deployment", WORKER)["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"
    assert config["MOVINET_WORKER_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name", [GATEWAY, WORKER])
def test_settings_come_from_the_configmap_and_optional_secret(base, name: str) -> None:
    sources = _container(base, "Deployment", name)["envFrom"]
    assert sources[0] == {"configMapRef": {"name": "movinet-config"}}
    # Last wins: the Secret overrides the ConfigMap (e.g. a managed Redis URL with a password).
    assert sources[1] == {"secretRef": {"name": "movinet-secrets", "optional": True}}


def test_secret_example_has_placeholders_only() -> None:
    (secret,) = load_docs(K8S / "secret.example.yaml")
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "movinet-secrets"
    assert "data" not in secret
    values = secret["stringData"]
    assert all(key.startswith("replace-me") for key in values.pop("MOVINET_API_KEYS").split(","))
    for name, value in values.items():
        assert "replace-me" in value, f"{name}: not a placeholder"


@pytest.mark.parametrize("name", [GATEWAY, WORKER])
def test_termination_grace_covers_prestop_and_drain(base, config, name: str) -> None:
    """SIGTERM comes after preStop; the drain (MOVINET_DRAIN_TIMEOUT_S) must end before SIGKILL."""
    pod = find(base, "Deployment", name)["spec"]["template"]["spec"]
    container = _container(base, "Deployment", name)
    needed = _prestop_s(container) + float(config["MOVINET_DRAIN_TIMEOUT_S"]) + DRAIN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_gateway_waits_for_endpoint_removal_before_stopping(base) -> None:
    assert _prestop_s(_container(base, "Deployment", GATEWAY)) >= 3
    # Workers get no traffic to wait for: they start draining at SIGTERM.
    assert _prestop_s(_container(base, "Deployment", WORKER)) == 0


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(base) -> None:
    for name in (GATEWAY, WORKER):
        assert "replicas" not in find(base, "Deployment", name)["spec"], name


def test_rollouts_keep_capacity(base) -> None:
    for name in (GATEWAY, WORKER):
        assert find(base, "Deployment", name)["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_pod_security(base) -> None:
    """runAsNonRoot, no privilege, read-only root with writable /tmp (and ~/.cache for the service)."""
    for workload, template in pod_templates(base):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], workload["metadata"]["name"]
            if container["image"].startswith("movinet-service"):
                assert "emptyDir" in volumes[mounts["/home/app/.cache"]]
                assert pod["securityContext"]["runAsUser"] == 10001  # the image's user (docker/Dockerfile)


def test_resources(base) -> None:
    for container in (c for _, t in pod_templates(base) for c in t["spec"]["containers"]):
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]


def test_worker_torch_threads_fit_its_cpu_request(base, gpu) -> None:
    for docs in (base, gpu):
        container = _container(docs, "Deployment", WORKER)
        threads = int({e["name"]: e["value"] for e in container["env"]}["MOVINET_TORCH_THREADS"])
        assert 1 <= threads <= float(container["resources"]["requests"]["cpu"])


# --- disruption and scaling ------------------------------------------------------------------------

def test_pod_disruption_budgets(base) -> None:
    assert find(base, "PodDisruptionBudget", GATEWAY)["spec"]["minAvailable"] == 1
    assert find(base, "PodDisruptionBudget", WORKER)["spec"]["maxUnavailable"] == 1


def test_gateway_hpa_on_cpu(base) -> None:
    hpa = find(base, "HorizontalPodAutoscaler", GATEWAY)["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert "cpu" in _container(base, "Deployment", GATEWAY)["resources"]["requests"]  # Utilization needs it


SCALED_OBJECT_SPEC = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
                      "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
PROMETHEUS_METADATA = {"serverAddress", "query", "threshold", "activationThreshold", "namespace",
                       "customHeaders", "ignoreNullValues", "unsafeSsl", "queryParameters", "authModes"}


def test_worker_scaledobject(base, config, tmp_path: Path) -> None:
    """KEDA's schema is not in kubernetes-validate: the fields KEDA 2 defines, checked here."""
    scaled = find(base, "ScaledObject", WORKER)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": WORKER}
    find(base, "Deployment", WORKER)
    assert 2 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert set(spec["advanced"]) <= {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"}
    queries = {}
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER_FIELDS and trigger["type"] == "prometheus"
        metadata = trigger["metadata"]
        assert {"serverAddress", "query", "threshold"} <= set(metadata) <= PROMETHEUS_METADATA
        assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata values are strings"
        assert float(metadata["threshold"]) > 0
        assert urlsplit(metadata["serverAddress"]).scheme in ("http", "https")
        queries[trigger["name"]] = metadata["query"]
    assert "movinet_backlog_frames" in queries["backlog"]
    assert "movinet_unclaimed_sessions" in queries["unclaimed"]
    for query in queries.values():
        assert query.count("(") == query.count(")")
    # Backlog is per worker (its own sessions): summed. Unclaimed is the pool's, reported by every
    # worker: never summed.
    assert queries["backlog"].startswith("sum(movinet_backlog_frames{")
    assert "sum(" not in queries["unclaimed"]
    # One extra worker per MOVINET_WORKER_MAX_SESSIONS unclaimed sessions.
    assert f"/ {config['MOVINET_WORKER_MAX_SESSIONS']})" in queries["unclaimed"]
    # The HPA behaviour KEDA passes on is a real autoscaling/v2 behaviour: validate it as one.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "keda-check"},
           "spec": {"scaleTargetRef": spec["scaleTargetRef"], "minReplicas": spec["minReplicaCount"],
                    "maxReplicas": spec["maxReplicaCount"], "behavior": behavior}}
    result = kubernetes_validate([dump_docs([hpa], tmp_path / "behavior.yaml")])
    assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr


# --- Redis -----------------------------------------------------------------------------------------

def test_redis_url_points_at_the_redis_service(base, config) -> None:
    url = urlsplit(config["MOVINET_REDIS_URL"])
    service = find(base, "Service", url.hostname)
    assert url.scheme == "redis" and url.port in [p["port"] for p in service["spec"]["ports"]]
    assert selects({"matchLabels": service["spec"]["selector"]},
                   find(base, "StatefulSet", REDIS)["spec"]["template"]["metadata"]["labels"])
    assert find(base, "StatefulSet", REDIS)["spec"]["serviceName"] in {
        doc["metadata"]["name"] for doc in base if doc["kind"] == "Service" and doc["spec"].get("clusterIP") == "None"}


def test_redis_persists_to_a_volume(base) -> None:
    statefulset = find(base, "StatefulSet", REDIS)
    args = _container(base, "StatefulSet", REDIS)["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in _container(base, "StatefulSet", REDIS)["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"]


def test_only_gateway_and_worker_pods_reach_redis(base) -> None:
    policies = [doc for doc in base if doc["kind"] == "NetworkPolicy"]
    redis_labels = find(base, "StatefulSet", REDIS)["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in policies if selects(p["spec"]["podSelector"], redis_labels)]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    allowed = set()
    for rule in policy["spec"]["ingress"]:
        assert [port["port"] for port in rule["ports"]] == [6379]
        for source in rule["from"]:
            assert set(source) == {"podSelector"}, "only pods of this namespace, by label"
            allowed |= {w["metadata"]["name"] for w, template in pod_templates(base)
                        if selects(source["podSelector"], template["metadata"]["labels"])}
    assert allowed == {GATEWAY, WORKER}
