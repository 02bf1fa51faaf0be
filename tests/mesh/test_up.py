"""`radixmesh up`: the whole mesh as child processes, started, watched and stopped."""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from radixmesh import serve
from radixmesh.launcher import endpoints_text
from radixmesh.launcher.mesh_plan import UpConfig, plan_mesh
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.hicache.storage.page_directory import default_capacity
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.cli_args import config_from_args
from radixmesh.shared.grpc_service import is_serving

from .conftest import (
    child_pids,
    free_port,
    pid_alive,
    spawn_mesh,
    stop_process,
    wait_mesh_up,
)

SERVICES = {"worker", "detokenizer", "scheduler"}


def wait_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_up_reports_healthy_endpoints_and_stops_every_service_on_sigterm(
        mesh_model_path: Path):
    metrics_port = free_port()
    worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    mesh = spawn_mesh(mesh_model_path, "--worker-metrics-port", str(metrics_port), worker="null")
    try:
        wait_mesh_up(mesh)
        children = child_pids(mesh.process.pid)
        assert len(children) == 4, "one process per service"
        assert set(mesh.internal) == SERVICES
        for address in [mesh.grpc_address, *mesh.internal.values()]:
            assert is_serving(address), address
        with urllib.request.urlopen(f"{mesh.http_url}/v1/models", timeout=5) as reply:
            assert json.load(reply)["data"][0]["id"] == mesh_model_path.name
        # The endpoints list gives each /metrics; the worker's reports its idle time.
        text = "".join(mesh.output)
        assert f"(metrics: {mesh.http_url}/metrics)" in text
        assert f"(internal; metrics: {worker_metrics})" in text
        with urllib.request.urlopen(worker_metrics, timeout=5) as reply:
            scraped = reply.read().decode()
        assert f'radixmesh:worker_idle_seconds_count{{model_name="{mesh_model_path.name}"}}' \
            in scraped
        mesh.process.send_signal(signal.SIGTERM)
        assert mesh.process.wait(30) == 0
        assert wait_gone(children), "a service outlived `radixmesh up`"
    finally:
        stop_process(mesh.process)


def test_up_stops_everything_and_fails_when_a_service_dies_at_startup(mesh_model_path: Path):
    # Restarts are on by default, but only once the mesh has been up: a service that cannot
    # start is a configuration error, which restarting would only repeat. Supervision of a
    # running mesh is tested in tests/launcher/.
    with socket.socket() as taken:  # the front door cannot bind its HTTP port: it exits
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mesh = spawn_mesh(mesh_model_path, "--port", str(port), worker="null")
        try:
            seen: set[int] = set()
            deadline = time.monotonic() + 60
            while mesh.process.poll() is None and time.monotonic() < deadline:
                seen.update(child_pids(mesh.process.pid))
                time.sleep(0.05)
            assert mesh.process.wait(30) == 1
            assert any("tokenizer exited" in line for line in mesh.process.stdout)
            assert seen and wait_gone(list(seen))
        finally:
            stop_process(mesh.process)


def test_the_planned_command_lines_carry_every_engine_flag_and_wire_the_peers():
    worker = WorkerConfig(model_path="/models/m", page_size=4, max_total_tokens=4096,
                          dtype="bfloat16", worker="null", port=1234)  # the plan picks ports
    scheduler = SchedulerConfig(chunked_prefill_size=512, disable_radix_cache=True,
                                schedule_conservativeness=1.5, max_inflight_steps=3)
    front_door = TokenizerConfig(model_path="/models/m", port=31000, api_key="k")
    up = UpConfig(startup_timeout=42.0)
    plan = plan_mesh(up, worker, scheduler, front_door, "info")

    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level")
    serve.add_cli_args(parser)
    for command in plan.services:  # the interpreter with -P, then the module
        assert command.argv[1:4] == ("-P", "-m", "radixmesh.serve")
    parsed = {command.name: parser.parse_args(command.argv[4:]) for command in plan.services}
    assert [command.name for command in plan.services] == \
        ["worker", "detokenizer", "scheduler", "tokenizer"]
    addresses = {command.name: command.health_address for command in plan.services}
    host_ports = {name: address.rsplit(":", 1) for name, address in addresses.items()}
    assert config_from_args(WorkerConfig, parsed["worker"]) == dataclasses.replace(
        worker, host=host_ports["worker"][0], port=int(host_ports["worker"][1]))
    assert config_from_args(SchedulerConfig, parsed["scheduler"]) == dataclasses.replace(
        scheduler, host=host_ports["scheduler"][0], port=int(host_ports["scheduler"][1]),
        worker_address=addresses["worker"], detokenizer_address=addresses["detokenizer"],
        peer_timeout=up.startup_timeout)
    tokenizer = config_from_args(TokenizerConfig, parsed["tokenizer"])
    assert tokenizer == dataclasses.replace(front_door, scheduler_address=addresses["scheduler"],
                                            detokenizer_address=addresses["detokenizer"])
    assert parsed["detokenizer"].model_path == "/models/m"
    assert plan.http_url == "http://127.0.0.1:31000" and plan.grpc_address == "127.0.0.1:30001"


def test_the_hicache_service_takes_its_metrics_port_from_up():
    worker = WorkerConfig(model_path="/models/m", worker="null")
    scheduler = SchedulerConfig(enable_hierarchical_cache=True)
    front_door = TokenizerConfig(model_path="/models/m")
    hicache = HiCacheConfig(hicache_storage_backend="file", hicache_storage_dir="/l3")
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level")
    serve.add_cli_args(parser)
    for port in (0, 9400):
        plan = plan_mesh(UpConfig(hicache_metrics_port=port), worker, scheduler, front_door,
                         "info", hicache)
        [command] = [command for command in plan.services if command.name == "hicache"]
        parsed = config_from_args(HiCacheConfig, parser.parse_args(command.argv[4:]))
        assert parsed.metrics_port == port
        assert parsed.hicache_storage_dir == "/l3"


def test_the_worker_takes_its_metrics_port_from_up():
    worker = WorkerConfig(model_path="/models/m", worker="null", metrics_port=9999)
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level")
    serve.add_cli_args(parser)
    for port, url in ((0, None), (9300, "http://127.0.0.1:9300/metrics")):
        plan = plan_mesh(UpConfig(worker_metrics_port=port), worker, SchedulerConfig(),
                         TokenizerConfig(model_path="/models/m"), "info")
        [command] = [command for command in plan.services if command.name == "worker"]
        # WorkerConfig's own --metrics-port is wiring: only UpConfig's reaches the worker.
        parsed = config_from_args(WorkerConfig, parser.parse_args(command.argv[4:]))
        assert (parsed.metrics_port, command.metrics_url) == (port, url)
        assert endpoints_text(plan).count("metrics: ") == 1 + (port != 0)


def test_data_parallel_replicas_each_get_a_scheduler_and_a_worker():
    worker = WorkerConfig(model_path="/models/m", tp_size=2, device="cuda")
    scheduler, front_door = SchedulerConfig(), TokenizerConfig(model_path="/models/m")
    plan = plan_mesh(UpConfig(dp_size=2, worker_metrics_port=9500), worker, scheduler,
                     front_door, "info")
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level")
    serve.add_cli_args(parser)
    parsed = {command.name: parser.parse_args(command.argv[4:]) for command in plan.services}
    assert [command.name for command in plan.services] == \
        ["worker-0", "worker-1", "detokenizer", "scheduler-0", "scheduler-1", "tokenizer"]
    addresses = {command.name: command.health_address for command in plan.services}
    workers = [config_from_args(WorkerConfig, parsed[f"worker-{i}"]) for i in range(2)]
    # Replica 1's two ranks take the GPUs after replica 0's; each worker its metrics port.
    assert [(w.base_gpu_id, w.tp_size, w.metrics_port) for w in workers] == \
        [(0, 2, 9500), (2, 2, 9501)]
    for i in range(2):
        assert parsed[f"scheduler-{i}"].worker_address == addresses[f"worker-{i}"]
        assert parsed[f"scheduler-{i}"].detokenizer_address == addresses["detokenizer"]
    tokenizer = config_from_args(TokenizerConfig, parsed["tokenizer"])
    assert tokenizer.scheduler_addresses == (addresses["scheduler-0"], addresses["scheduler-1"])


def test_data_parallel_replicas_each_get_a_hicache_service_of_their_own():
    worker, front_door = WorkerConfig(model_path="/m", worker="null"), TokenizerConfig(model_path="/m")
    scheduler = SchedulerConfig(enable_hierarchical_cache=True)
    hicache = HiCacheConfig(hicache_storage_backend="file", hicache_storage_dir="/l3",
                            node_id="node-a")
    plan = plan_mesh(UpConfig(dp_size=3, hicache_metrics_port=9400), worker, scheduler,
                     front_door, "info", hicache)
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level")
    serve.add_cli_args(parser)
    parsed = {command.name: parser.parse_args(command.argv[4:]) for command in plan.services}
    assert [command.name for command in plan.services] == \
        ["worker-0", "worker-1", "worker-2", "detokenizer", "hicache-0", "hicache-1",
         "hicache-2", "scheduler-0", "scheduler-1", "scheduler-2", "tokenizer"]
    addresses = {command.name: command.health_address for command in plan.services}
    internal = [address for name, address in addresses.items() if name != "tokenizer"]
    assert len(set(internal)) == len(internal) == 10
    caches = [config_from_args(HiCacheConfig, parsed[f"hicache-{i}"]) for i in range(3)]
    # Each its own metrics port and holder name in the page index; one L3 directory for all.
    assert [(c.metrics_port, c.node_id, c.hicache_storage_dir) for c in caches] == \
        [(9400 + i, f"node-a-{i}", "/l3") for i in range(3)]
    assert [command.metrics_url for command in plan.services if command.name[:7] == "hicache"] \
        == [f"http://127.0.0.1:{9400 + i}/metrics" for i in range(3)]
    for i in range(3):  # each scheduler asks its own hicache service
        assert parsed[f"scheduler-{i}"].hicache_address == addresses[f"hicache-{i}"]
        assert parsed[f"scheduler-{i}"].worker_address == addresses[f"worker-{i}"]
    # One replica keeps the plain name and the node id as given.
    single = plan_mesh(UpConfig(), worker, scheduler, front_door, "info", hicache)
    [command] = [command for command in single.services if command.name == "hicache"]
    assert config_from_args(HiCacheConfig, parser.parse_args(command.argv[4:])).node_id == "node-a"
    with pytest.raises(ValueError, match="--hicache-advertise-address"):
        plan_mesh(UpConfig(dp_size=2), worker, scheduler, front_door, "info",
                  dataclasses.replace(hicache, hicache_advertise_address="10.0.0.1:9000"))
    with pytest.raises(ValueError, match="--hicache-metrics-port 65535 \\+ --dp-size 2"):
        UpConfig(dp_size=2, hicache_metrics_port=65535)


def test_data_parallel_replicas_share_the_l3_cap_of_their_one_directory(tmp_path: Path):
    worker, front_door = WorkerConfig(model_path="/m", worker="null"), TokenizerConfig(model_path="/m")
    scheduler = SchedulerConfig(enable_hierarchical_cache=True)
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-level")
    serve.add_cli_args(parser)

    def replica_caps(**flags) -> list[float | None]:
        hicache = HiCacheConfig(hicache_storage_backend="file",
                                hicache_storage_dir=str(tmp_path / "l3"), **flags)
        plan = plan_mesh(UpConfig(dp_size=4), worker, scheduler, front_door, "info", hicache)
        return [config_from_args(HiCacheConfig, parser.parse_args(c.argv[4:]))
                .storage_capacity_bytes for c in plan.services if c.name.startswith("hicache")]

    assert replica_caps(hicache_storage_size=10.0) == [2_500_000_000] * 4
    # Uncapped: the disk's free space less 10%, once for the directory, not once a replica.
    default = default_capacity(tmp_path / "l3")
    assert all(abs(cap - default / 4) < 2**20 for cap in replica_caps())
    assert HiCacheConfig(hicache_storage_size=10.0).shared_by(4).hicache_storage_size == 10.0


def test_internal_ports_are_all_different_and_never_a_public_port(monkeypatch):
    """The plan picks every internal port at once, skipping the ones the mesh publishes
    (gRPC would let two services share a port and split its traffic between them), and
    outside the kernel's ephemeral range, where another process's outgoing connection could
    take a port between the pick and the bind; and outside the range callers pick from for
    processes they start, so a port promised elsewhere is never taken meanwhile."""
    from radixmesh.launcher import free_ports
    public, taken = 21000, 21001
    real_sample = random.sample

    def public_and_taken_first(population, k):  # the first candidates are the traps
        rest = [port for port in real_sample(population, k) if port not in (public, taken)]
        return [public, taken, *rest]

    monkeypatch.setattr(free_ports.random, "sample", public_and_taken_first)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        plan = plan_mesh(UpConfig(dp_size=2), WorkerConfig(model_path="/m", worker="null"),
                         SchedulerConfig(), TokenizerConfig(model_path="/m", port=public), "info")
    ports = [int(command.health_address.rsplit(":", 1)[1]) for command in plan.services
             if command.name != "tokenizer"]
    assert len(set(ports)) == len(ports) == 5
    assert public not in ports and taken not in ports
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(1024 <= port < low for port in ports)
    assert all(port in free_ports.MESH_INTERNAL_PORTS for port in ports)
    assert not set(free_ports.MESH_INTERNAL_PORTS) & set(free_ports.CALLER_PORTS)


def test_a_grpc_server_on_a_taken_port_fails_loudly():
    import asyncio

    from radixmesh.shared.grpc_service import start_server

    async def clash() -> None:
        first = await start_server("127.0.0.1:0", lambda server: None, ())
        try:
            with pytest.raises(OSError, match=f"127.0.0.1:{first.port}.*in use"):
                await start_server(f"127.0.0.1:{first.port}", lambda server: None, ())
        finally:
            await first.server.stop(0)

    asyncio.run(clash())
