"""A data-parallel mesh in this process: two null workers, two schedulers, one detokenizer and
the real front door (`TokenizerServer` with `--scheduler-address A,B`), each on its own
loopback gRPC port through its real `serve` entry point (as tests/mesh/test_trace_context.py
does), so a test can read the detokenizer's subscriber count and the front door's feed, and
stop and start a service on its port.

A test passes the `gate` fixture (conftest.py), which holds every null worker's step while
cleared: requests stay live for as long as a test needs, with no timing involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

import grpc

from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.services.detokenizer import server as detokenizer_server
from radixmesh.services.detokenizer.config import DetokenizerConfig
from radixmesh.services.detokenizer.servicer import Broadcaster
from radixmesh.services.scheduler import server as scheduler_server
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.tokenizer.replicas import ReplicaSet
from radixmesh.services.tokenizer.server import TokenizerServer
from radixmesh.services.worker import server as worker_server
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared import wire
from radixmesh.shared.grpc_service import wait_until_serving
from radixmesh.shared.mesh_info import SchedulerLoad
from radixmesh.shared.protos_gen import common_pb2, internal_pb2_grpc
from tests.mesh.front_door_harness import READY_TIMEOUT_S, tiny_model_dir


def _address(port: int) -> str:
    return f"127.0.0.1:{port}"


@dataclass
class InProcessDP:
    replicas: int = 2
    model: str = field(default_factory=lambda: str(tiny_model_dir()))
    worker_ports: list[int] = field(default_factory=list)
    scheduler_ports: list[int] = field(default_factory=list)
    detokenizer_port: int = 0
    public_ports: list[int] = field(default_factory=list)  # the front door's HTTP and gRPC
    broadcaster: Broadcaster = field(default_factory=Broadcaster)
    front: TokenizerServer | None = None
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ports = pick_free_ports(2 * self.replicas + 3)  # in one go: all different
        self.worker_ports = ports[:self.replicas]
        self.scheduler_ports = ports[self.replicas:2 * self.replicas]
        self.detokenizer_port, *self.public_ports = ports[2 * self.replicas:]

    @property
    def core(self) -> ReplicaSet:
        assert self.front is not None and isinstance(self.front.core, ReplicaSet)
        return self.front.core

    @property
    def grpc_address(self) -> str:
        assert self.front is not None
        return _address(self.front.config.grpc_port)

    @property
    def http_url(self) -> str:
        assert self.front is not None
        return f"http://127.0.0.1:{self.front.config.port}"

    # ---- services ----------------------------------------------------------------------------

    def _spawn(self, name: str, make: Callable[[], Coroutine]) -> None:
        self.tasks[name] = asyncio.create_task(make(), name=name)

    async def stop(self, name: str) -> None:
        task = self.tasks.pop(name)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def start_detokenizer(self) -> None:
        self.broadcaster = Broadcaster()  # a restarted detokenizer has no subscriber yet
        config = DetokenizerConfig(model_path=self.model, port=self.detokenizer_port)
        self._spawn("detokenizer", lambda: detokenizer_server.serve(config, self.broadcaster))

    def start_scheduler(self, index: int) -> None:
        config = SchedulerConfig(
            port=self.scheduler_ports[index],
            worker_address=_address(self.worker_ports[index]),
            detokenizer_address=_address(self.detokenizer_port))
        self._spawn(f"scheduler-{index}", lambda: scheduler_server.serve(config))

    async def wait_scheduler_serving(self, index: int) -> None:
        async with grpc.aio.insecure_channel(_address(self.scheduler_ports[index])) as channel:
            await wait_until_serving(channel, READY_TIMEOUT_S)

    async def scheduler_load(self, index: int) -> SchedulerLoad:
        async with grpc.aio.insecure_channel(_address(self.scheduler_ports[index])) as channel:
            load = await internal_pb2_grpc.SchedulerStub(channel).GetLoad(common_pb2.Empty())
            return wire.scheduler_load_from_proto(load)

    async def wait_replicas_ready(self, count: int) -> None:
        """Until exactly `count` replicas take requests at the front door."""
        async with asyncio.timeout(READY_TIMEOUT_S):
            while sum(router.ready for router in self.core.routers) != count:
                await asyncio.sleep(0.02)

    async def wait_front_door_down(self) -> None:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await self.core.wait_disconnected()


@contextlib.asynccontextmanager
async def in_process_dp(gate: threading.Event, replicas: int = 2) -> AsyncIterator[InProcessDP]:
    """The mesh, serving on every replica; on the way out `gate` opens (no step stays held)."""
    mesh = InProcessDP(replicas)
    for index, port in enumerate(mesh.worker_ports):
        config = WorkerConfig(model_path=mesh.model, port=port, worker="null")
        mesh._spawn(f"worker-{index}", lambda config=config: worker_server.serve(config))
    mesh.start_detokenizer()
    for index in range(replicas):
        mesh.start_scheduler(index)
    mesh.front = TokenizerServer(TokenizerConfig(
        model_path=mesh.model, port=mesh.public_ports[0], grpc_port=mesh.public_ports[1],
        scheduler_address=",".join(_address(port) for port in mesh.scheduler_ports),
        detokenizer_address=_address(mesh.detokenizer_port)))
    try:
        for index in range(replicas):
            await mesh.wait_scheduler_serving(index)
        await mesh.front.start()
        await mesh.wait_replicas_ready(replicas)
        yield mesh
    finally:
        gate.set()
        await mesh.front.stop()
        for name in list(mesh.tasks):
            await mesh.stop(name)
