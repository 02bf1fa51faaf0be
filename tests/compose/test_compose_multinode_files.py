"""The multi-node compose files (router, two nodes, Redis, Jaeger) without a Docker engine:
`config` accepts each combination (the schema check is test_compose_files.py's, which reads
every compose*.yaml), the GPU and CPU files stay in step, each node is the single-node
stack's five services wired to its own peers and ports, and the CI file's `front-door` is the
router's command without published ports."""

from __future__ import annotations

import pytest
import yaml

from tests.compose.compose_cli import (
    MULTI_CI_FILE,
    MULTI_COMBINATIONS,
    MULTI_CPU_FILE,
    MULTI_GPU_FILE,
    ComposeProject,
    compose_command,
)
from tests.compose.test_compose_files import RADIXMESH_SERVICES, _flags

NODES = {"node-a": 301, "node-b": 302}  # each node's port prefix
OWN_PORT = {"tokenizer": "01", "scheduler": "10", "worker": "20", "detokenizer": "30",
            "hicache": "40"}
REDIS_URL = "redis://redis:6379/0"


def load(path) -> dict:
    return yaml.safe_load(path.read_text())["services"]


def service_names() -> set[str]:
    return {"router", "redis", "jaeger",
            *(f"{node}-{name}" for node in NODES for name in RADIXMESH_SERVICES)}


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


@pytest.mark.parametrize("files", MULTI_COMBINATIONS,
                         ids=lambda files: "+".join(f.name for f in files))
def test_compose_config_accepts(files) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no Compose CLI (docker compose / docker-compose) installed")
    project = ComposeProject("radixmesh-config-check", files, command)
    rendered = yaml.safe_load(project.run("config", timeout=120).stdout)
    assert service_names() <= set(rendered["services"])


@pytest.mark.parametrize("path", (MULTI_GPU_FILE, MULTI_CPU_FILE), ids=lambda p: p.name)
def test_each_node_is_a_mesh_of_its_own(path) -> None:
    services = load(path)
    assert service_names() <= set(services)
    for node, prefix in NODES.items():
        def address(name: str, node: str = node, prefix: int = prefix) -> str:
            return f"{node}-{name}:{prefix}{OWN_PORT[name]}"

        for name in RADIXMESH_SERVICES:
            service = services[f"{node}-{name}"]
            command = service["command"]
            assert command[:3] == ["radixmesh", "serve", name]
            assert service["healthcheck"]["test"][-1] == f"127.0.0.1:{prefix}{OWN_PORT[name]}"
            assert flag(command, "--otlp-traces-endpoint") == "jaeger:4317"
            assert "ports" not in service  # only the router is published
        scheduler = services[f"{node}-scheduler"]["command"]
        for option, peer in (("--worker-address", "worker"),
                             ("--detokenizer-address", "detokenizer"),
                             ("--hicache-address", "hicache")):
            assert flag(scheduler, option) == address(peer)
        front_door = services[f"{node}-tokenizer"]["command"]
        assert flag(front_door, "--scheduler-address") == address("scheduler")
        assert flag(front_door, "--node-id") == node
        assert flag(front_door, "--registry-redis-url") == REDIS_URL
        assert flag(front_door, "--advertise-address") == address("tokenizer")
        hicache = services[f"{node}-hicache"]["command"]
        assert flag(hicache, "--node-id") == node
        assert flag(hicache, "--hicache-redis-url") == REDIS_URL
        assert flag(hicache, "--hicache-advertise-address") == address("hicache")
        assert services[f"{node}-worker"]["ipc"] == f"service:{node}-hicache"
    router = services["router"]
    assert router["command"][:3] == ["radixmesh", "serve", "router"]
    assert flag(router["command"], "--redis-url") == REDIS_URL
    assert {name for name, service in services.items() if service.get("ports")} \
        == {"router", "jaeger"}


def test_gpu_file_gives_each_worker_its_own_gpu() -> None:
    gpu, cpu = load(MULTI_GPU_FILE), load(MULTI_CPU_FILE)
    devices = [gpu[f"{node}-worker"]["deploy"]["resources"]["reservations"]["devices"]
               for node in NODES]
    assert [device[0]["device_ids"] for device in devices] == [["0"], ["1"]]
    assert all("deploy" not in cpu[f"{node}-worker"] for node in NODES)


def test_cpu_file_differs_from_the_gpu_file_only_where_it_must() -> None:
    gpu, cpu = load(MULTI_GPU_FILE), load(MULTI_CPU_FILE)
    may_differ = {"--model-path", "--load-format", "--mem-fraction-static", "--device",
                  "--hicache-size", "--hicache-storage-size"}
    for name in service_names() - {"redis", "jaeger"}:
        assert _flags(cpu[name]["command"], may_differ) == _flags(gpu[name]["command"],
                                                                  may_differ), name
        assert {k: v for k, v in cpu[name].get("depends_on", {}).items() if k != "model-init"} \
            == gpu[name].get("depends_on", {}), name


def test_ci_front_door_is_the_cpu_router_without_ports() -> None:
    cpu, ci = load(MULTI_CPU_FILE), load(MULTI_CI_FILE)
    for part in ("command", "environment", "depends_on", "volumes"):
        assert ci["front-door"][part] == cpu["router"][part], part
    assert "ports" not in ci["front-door"]
    for name in service_names() - {"router", "jaeger"} | {"model-init", "front-door"}:
        assert ci[name]["network_mode"] == "host", name
        hosts = set(ci[name]["extra_hosts"])
        assert {f"{other}:127.0.0.1" for other in service_names()} <= hosts, name
