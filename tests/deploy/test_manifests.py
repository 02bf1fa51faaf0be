"""deploy/kubernetes rendered offline: both overlays with every available kubectl (the same
objects from each), every object valid against Kubernetes' own schemas (kubernetes-validate,
strict: an unknown field fails), and what the issue asks of the pods' shape."""

from __future__ import annotations

import copy

import pytest

from tests.deploy.manifests import (
    OLDEST_SUPPORTED,
    OVERLAYS,
    Rendered,
    containers,
    flag,
    kubectls,
    pod_spec,
    render,
)

NODE_PORTS = {"tokenizer": 30001, "scheduler": 30010, "worker": 30020, "detokenizer": 30030,
              "hicache": 30040}
STOP_WITHIN_S = 1 + 5 + 10  # gRPC grace, the span flush, margin (radixmesh/serve.py)

if not kubectls():
    pytest.skip("no kubectl installed (CI's .ci/run installs Debian's kubernetes-client)",
                allow_module_level=True)
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install -e '.[dev]' installs kubernetes-validate")


def key(item: dict) -> tuple[str, str]:
    return item["kind"], item["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, Rendered]:
    return request.param, Rendered(render(kubectls()[0], request.param))


@pytest.mark.parametrize("overlay_name", OVERLAYS)
def test_every_kubectl_renders_the_same_objects(overlay_name: str) -> None:
    renders = {kubectl: sorted(render(kubectl, overlay_name), key=key) for kubectl in kubectls()}
    first = next(iter(renders.values()))
    assert {key(item) for item in first} >= {
        ("StatefulSet", "radixmesh-node"), ("Service", "radixmesh-node"),
        ("Deployment", "radixmesh-router"), ("Service", "radixmesh-router"),
        ("StatefulSet", "radixmesh-redis"), ("ConfigMap", "radixmesh-config")}
    for kubectl, objects in renders.items():
        assert objects == first, f"{kubectl} renders {overlay_name} differently"


@pytest.mark.parametrize("version", [OLDEST_SUPPORTED, "latest"])
def test_every_object_validates(overlay: tuple[str, Rendered], version: str) -> None:
    version = kubernetes_validate.latest_version() if version == "latest" else version
    for item in overlay[1].objects:
        try:
            kubernetes_validate.validate(item, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay[0]}: {key(item)} invalid for Kubernetes {version}: "
                        f"{error.message} at {list(error.path)}")


def test_validation_is_strict() -> None:
    """The check above fails on a field Kubernetes does not know (not a silent pass)."""
    item = copy.deepcopy(Rendered(render(kubectls()[0], "cpu")).get("Service", "radixmesh-node"))
    item["spec"]["clusterIp"] = "None"  # misspelt clusterIP
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(item, OLDEST_SUPPORTED, strict=True)


def test_node_pod(overlay: tuple[str, Rendered]) -> None:
    name, rendered = overlay
    nodes = rendered.get("StatefulSet", "radixmesh-node")
    assert nodes["spec"]["serviceName"] == "radixmesh-node"
    spec, services = pod_spec(nodes), containers(nodes)
    assert set(services) == set(NODE_PORTS)
    for service, port in NODE_PORTS.items():
        command = services[service]["command"]
        assert command[:3] == ["radixmesh", "serve", service]
        own_port = flag(command, "--grpc-port" if service == "tokenizer" else "--port")
        assert int(own_port) == port
        for probe in ("livenessProbe", "startupProbe"):
            assert services[service][probe]["grpc"] == {"port": port}, (service, probe)
        assert flag(command, "--otlp-traces-endpoint") == "$(OTLP_ENDPOINT)"
    assert services["tokenizer"]["readinessProbe"]["httpGet"] == {"path": "/health",
                                                                 "port": "http"}
    # The node id is the pod's name (downward API), in the page index and the registration.
    for service in ("hicache", "tokenizer"):
        env = {item["name"]: item for item in services[service]["env"]}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert flag(services[service]["command"], "--node-id") == "$(POD_NAME)"
    assert flag(services["hicache"]["command"], "--hicache-redis-url") == "$(REDIS_URL)"
    assert flag(services["tokenizer"]["command"], "--registry-redis-url") == "$(REDIS_URL)"
    # L2: one in-memory emptyDir at /dev/shm in both the hicache and the worker.
    shm = next(volume for volume in spec["volumes"] if volume["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    for service in ("hicache", "worker"):
        assert {"name": "shm", "mountPath": "/dev/shm"} in services[service]["volumeMounts"]
    gpu = services["worker"].get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
    assert gpu == (1 if name == "gpu" else None)
    assert spec["terminationGracePeriodSeconds"] >= STOP_WITHIN_S


def test_router(overlay: tuple[str, Rendered]) -> None:
    router = overlay[1].get("Deployment", "radixmesh-router")
    command = containers(router)["router"]["command"]
    assert command[:3] == ["radixmesh", "serve", "router"]
    assert flag(command, "--redis-url") == "$(REDIS_URL)"
    assert overlay[1].get("Service", "radixmesh-router")["spec"]["selector"] == \
        router["spec"]["selector"]["matchLabels"]
    env = {item["name"]: item for item in containers(router)["router"]["env"]}
    assert env["RADIXMESH_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True


def test_security_contexts(overlay: tuple[str, Rendered]) -> None:
    """Non-root pods; every container with a read-only root, no capabilities, no escalation."""
    for workload in (*overlay[1].of_kind("StatefulSet"), *overlay[1].of_kind("Deployment")):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True, key(workload)
        assert spec["automountServiceAccountToken"] is False, key(workload)
        for container in (*spec["containers"], *spec.get("initContainers", [])):
            context = container["securityContext"]
            assert context == {"allowPrivilegeEscalation": False,
                               "readOnlyRootFilesystem": True,
                               "capabilities": {"drop": ["ALL"]}}, container["name"]


def test_disruption_budgets_and_network_policies(overlay: tuple[str, Rendered]) -> None:
    rendered = overlay[1]
    budgets = {item["metadata"]["name"] for item in rendered.of_kind("PodDisruptionBudget")}
    assert budgets == {"radixmesh-node", "radixmesh-router"}
    policies = {item["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]: item
                for item in rendered.of_kind("NetworkPolicy")}
    assert set(policies) == {"node", "router", "redis"}
    for policy in policies.values():
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    # Node ingress: the router (front door ports), other nodes (hicache), Prometheus.
    sources = [(rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
                rule["from"][0]["podSelector"]["matchLabels"].get("app.kubernetes.io/component"),
                sorted(port["port"] for port in rule["ports"]))
               for rule in policies["node"]["spec"]["ingress"]]
    assert sources == [("radixmesh", "router", [30000, 30001]),
                       ("radixmesh", "node", [30040]),
                       ("prometheus", None, [30000, 30021, 30041])]
