"""Three null-worker meshes ("nodes", ids node-0..2) registered in a real redis-server, and a
router in front of them: started once per module (mesh starts are the slow part)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.shared.protos_gen import common_pb2, generate_pb2_grpc
from tests.hicache.conftest import redis_server  # noqa: F401  (the module's real Redis)
from tests.hicache.redis_server import RedisServer
from tests.mesh.conftest import (
    STARTUP_TIMEOUT_S,
    MeshProcess,
    mesh_model_path,  # noqa: F401 (the mesh tests' model, registered by import)
    spawn_mesh,
    stop_process,
    wait_mesh_up,
    wait_serving,
)

NUM_NODES = 3
NODE_IDS = tuple(f"node-{index}" for index in range(NUM_NODES))
# Small balance thresholds: a hot prefix spreads after a few requests in flight.
ROUTER_FLAGS = ("--balance-abs-threshold", "2", "--balance-rel-threshold", "1.5",
                "--discovery-interval", "0.25", "--node-retry-backoff", "0.25",
                "--node-retry-backoff-max", "1")


def node_flags(node_id: str, redis_url: str) -> tuple[str, ...]:
    return ("--node-id", node_id, "--registry-redis-url", redis_url,
            "--registry-heartbeat", "0.25", "--registry-ttl", "2")


@dataclass
class Nodes:
    model_path: Path
    redis_url: str
    meshes: dict[str, MeshProcess] = field(default_factory=dict)

    def start(self, *node_ids: str) -> None:
        """Starts these nodes together, returning once each is up."""
        for node_id in node_ids:
            self.meshes[node_id] = spawn_mesh(self.model_path,
                                              *node_flags(node_id, self.redis_url))
        for node_id in node_ids:
            wait_mesh_up(self.meshes[node_id])

    def kill(self, node_id: str) -> None:
        stop_process(self.meshes.pop(node_id).process)

    def stop_all(self) -> None:
        for node_id in list(self.meshes):
            self.kill(node_id)


@dataclass
class Router:
    process: subprocess.Popen
    http_url: str
    grpc_address: str

    def server_info(self) -> dict:
        with grpc.insecure_channel(self.grpc_address) as channel:
            reply = generate_pb2_grpc.GenerationStub(channel).GetServerInfo(
                common_pb2.Empty(), timeout=10)
        return json.loads(reply.json)

    def wait_answering(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Until its HTTP port answers /metrics (it does before any node is usable)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=5):
                    return
            except OSError:  # not listening yet
                assert self.process.poll() is None, f"the router exited ({self.process.returncode})"
                assert time.monotonic() < deadline, "the router never answered"
                time.sleep(0.1)

    def nodes(self) -> dict[str, dict]:
        return {node["node_id"]: node for node in self.server_info()["nodes"]}

    def wait_nodes(self, usable: set[str], timeout: float = 60.0) -> None:
        """Until exactly `usable` are the usable nodes."""
        deadline = time.monotonic() + timeout
        while True:
            now = {node_id for node_id, node in self.nodes().items() if node["usable"]}
            if now == usable:
                return
            assert time.monotonic() < deadline, f"usable nodes {now}, expected {usable}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def nodes(mesh_model_path: Path, redis_server: RedisServer) -> Iterator[Nodes]:  # noqa: F811
    started = Nodes(mesh_model_path, redis_server.url())
    try:
        started.start(*NODE_IDS)
        yield started
    finally:
        started.stop_all()


@contextlib.contextmanager
def start_router(model_path: Path, *flags: str, log: Path | None = None,
                 serving: bool = True) -> Iterator[Router]:
    """A router on free ports, once SERVING (`serving` False: once it answers at all, for a
    router that reaches no node); `log`: a file for its log (default: stderr)."""
    port, grpc_port = pick_free_ports(2)
    argv = [sys.executable, "-P", "-m", "radixmesh.serve", "--log-level", "warning", "router",
            "--model-path", str(model_path), "--host", "127.0.0.1", "--port", str(port),
            "--grpc-port", str(grpc_port), *ROUTER_FLAGS, *flags]
    with contextlib.ExitStack() as files:
        stderr = files.enter_context(log.open("w")) if log is not None else None
        process = subprocess.Popen(argv, stderr=stderr)
    router = Router(process, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    try:
        if serving:
            wait_serving(router.grpc_address, process, "router")
        else:
            router.wait_answering()
        yield router
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def router(nodes: Nodes, redis_server: RedisServer) -> Iterator[Router]:  # noqa: F811
    with start_router(nodes.model_path, "--redis-url", redis_server.url()) as started:
        started.wait_nodes(set(NODE_IDS))
        yield started
