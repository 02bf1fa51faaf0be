"""The compose files without a Docker engine: the Compose Specification's JSON schema, the
installed Compose's own `config`, and the invariants that keep the GPU, CPU and CI files in step.

The schema check runs everywhere (check-jsonschema ships the schema: no network). `config`
needs a Compose CLI but no daemon; the CI step that brings the stack up installs one.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.compose.compose_cli import (
    CI_FILE,
    COMBINATIONS,
    COMPOSE_DIR,
    CPU_FILE,
    GPU_FILE,
    ComposeProject,
    compose_command,
)

RADIXMESH_SERVICES = ("hicache", "worker", "detokenizer", "scheduler", "tokenizer")
PORTS = {"tokenizer": "30001", "scheduler": "30010", "worker": "30020",
         "detokenizer": "30030", "hicache": "30040"}


def load(path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", sorted(COMPOSE_DIR.glob("compose*.yaml")), ids=lambda p: p.name)
def test_schema(path) -> None:
    exe = shutil.which("check-jsonschema")
    if exe is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    result = subprocess.run([exe, "--builtin-schema", "vendor.compose-spec", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", COMBINATIONS, ids=lambda files: "+".join(f.name for f in files))
def test_compose_config_accepts(files) -> None:
    command = compose_command()
    if command is None:
        pytest.skip("no Compose CLI (docker compose / docker-compose) installed")
    project = ComposeProject("radixmesh-config-check", files, command)
    rendered = yaml.safe_load(project.run("config", timeout=120).stdout)
    assert set(RADIXMESH_SERVICES) <= set(rendered["services"])


@pytest.mark.parametrize("path", (GPU_FILE, CPU_FILE), ids=lambda p: p.name)
def test_stack_shape(path) -> None:
    """What design §10 asks of every variant: healthchecks through `radixmesh health` on the
    service's own port, peers by name, tracing to Jaeger, waits on healthy peers, the worker
    in the hicache service's IPC namespace, and no published port but the front door's."""
    services = load(path)["services"]
    assert {"redis", "jaeger", *RADIXMESH_SERVICES} <= set(services)
    for name in RADIXMESH_SERVICES:
        service = services[name]
        assert service["command"][:3] == ["radixmesh", "serve", name]
        assert service["healthcheck"]["test"] == [
            "CMD", "radixmesh", "health", "--quiet", "--target", f"127.0.0.1:{PORTS[name]}"]
        command = service["command"]
        assert "--enable-trace" in command
        assert command[command.index("--otlp-traces-endpoint") + 1] == "jaeger:4317"
        assert command[command.index("--host") + 1] == "0.0.0.0"
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] in ("service_healthy",
                                               "service_completed_successfully")
    published = {name for name, service in services.items() if service.get("ports")}
    assert published <= {"tokenizer", "jaeger"}
    assert all(port.startswith("127.0.0.1:") for port in services["jaeger"]["ports"])
    scheduler = services["scheduler"]["command"]
    for flag, peer in (("--worker-address", "worker:30020"),
                       ("--detokenizer-address", "detokenizer:30030"),
                       ("--hicache-address", "hicache:30040")):
        assert scheduler[scheduler.index(flag) + 1] == peer
    assert services["hicache"]["ipc"] == "shareable" and services["hicache"]["shm_size"]
    assert services["worker"]["ipc"] == "service:hicache"


def test_gpu_reserved_only_in_the_gpu_file() -> None:
    devices = load(GPU_FILE)["services"]["worker"]["deploy"]["resources"]["reservations"][
        "devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in load(CPU_FILE)["services"]["worker"]


@pytest.mark.parametrize("path", [GPU_FILE, COMPOSE_DIR / "compose.multinode.yaml"],
                         ids=lambda p: p.name)
def test_gpu_workers_keep_compiled_kernels_in_a_volume(path) -> None:
    """FlashInfer's JIT, Triton and torch.compile write under /kernel-cache, a named volume
    (made by the image, owned by the services' user), so a restarted worker compiles nothing."""
    compose = load(path)
    workers = [s for name, s in compose["services"].items() if name.endswith("worker")]
    assert workers
    for worker in workers:
        assert "kernel-cache:/kernel-cache" in worker["volumes"]
        env = worker["environment"]
        assert env["FLASHINFER_WORKSPACE_BASE"] == "/kernel-cache"
        assert env["TRITON_CACHE_DIR"].startswith("/kernel-cache/")
        assert env["TORCHINDUCTOR_CACHE_DIR"].startswith("/kernel-cache/")
    assert compose["volumes"]["kernel-cache"] == {"name": "radixmesh-kernel-cache"}
    assert "/kernel-cache" in (COMPOSE_DIR / "Dockerfile").read_text()


def test_cpu_file_differs_from_the_gpu_file_only_where_it_must() -> None:
    """compose.cpu.yaml is a whole file (an override cannot drop a GPU reservation): every
    service flag matches compose.yaml's except the model, the image target and the sizes."""
    gpu, cpu = load(GPU_FILE)["services"], load(CPU_FILE)["services"]
    may_differ = {"--model-path", "--load-format", "--mem-fraction-static", "--device",
                  "--hicache-size", "--hicache-storage-size"}
    for name in RADIXMESH_SERVICES:
        assert _flags(cpu[name]["command"], may_differ) == _flags(gpu[name]["command"],
                                                                  may_differ), name
        assert {k: v for k, v in cpu[name].get("depends_on", {}).items() if k != "model-init"} \
            == gpu[name].get("depends_on", {}), name
    assert cpu["worker"]["build"]["target"] == "cpu" and gpu["worker"]["build"]["target"] == "cuda"


def test_ci_front_door_is_the_cpu_tokenizer_without_ports() -> None:
    cpu, ci = load(CPU_FILE)["services"], load(CI_FILE)["services"]
    assert ci["front-door"]["command"] == cpu["tokenizer"]["command"]
    assert ci["front-door"]["environment"] == cpu["tokenizer"]["environment"]
    assert ci["front-door"]["depends_on"] == cpu["tokenizer"]["depends_on"]
    assert "ports" not in ci["front-door"]
    for name in (*RADIXMESH_SERVICES, "redis", "model-init", "front-door"):
        if name == "tokenizer":
            continue
        assert ci[name]["network_mode"] == "host", name
        assert "worker:127.0.0.1" in ci[name]["extra_hosts"], name


def _flags(command: list[str], skip: set[str]) -> list[str]:
    """The command without the flags in `skip` (and their values)."""
    kept, index = [], 0
    while index < len(command):
        if command[index] in skip:
            index += 2
            continue
        kept.append(command[index])
        index += 1
    return kept
