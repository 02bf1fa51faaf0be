"""Data parallelism with the hierarchical cache, through one real `radixmesh up --dp-size 2
--enable-hierarchical-cache --hicache-storage-backend file` on the tiny model (CPU, fp32): each
replica has a hicache service of its own (its own host pool, mapped by its own worker, and its
own metrics port), the replicas share the L3 directory, so a prompt whose history replica 0
computed and wrote to L3 is served by replica 1 from those files with the greedy tokens of a
computation from scratch; and a replica's hicache service killed is restarted with only its
replica touched (issue 23)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from radixmesh.client import AsyncClient
from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.shared import wire
from radixmesh.shared.grpc_service import is_serving
from radixmesh.shared.mesh_info import SchedulerLoad
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.protos_gen import common_pb2, internal_pb2_grpc
from tests.hicache.l3_files import namespace_root, page_files
from tests.hicache.mesh_runs import GREEDY, PAGE_SIZE, TIERED_FLAGS, samples, scrape
from tests.mesh.conftest import MeshProcess, child_pids, start_mesh
from tests.parallel.test_dp_mesh import wait_replicas_ready

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
WAIT_S = 60.0
SHM_PREFIX = "/dev/shm/radixmesh_hicache_"
# Replica 0's prompt, then a longer one that starts with it. The front door's dispatch
# (`shared/replica_choice.py`, cache_aware) sends the first, both replicas idle and empty, to
# replica 0; the second, of which replica 0 holds less than half, to the least loaded replica
# holding least: replica 1, whose only copy of the shared pages is in L3.
HISTORY_TOKENS = 96  # whole pages
PROMPT_TOKENS = 200


@dataclass
class DpTieredMesh:
    mesh: MeshProcess
    l3_dir: Path
    metrics_urls: list[str]  # each replica's hicache service's /metrics


def consecutive_free_ports(count: int) -> int:
    """A port P with P .. P + count - 1 all free (`up` gives replica i port P + i)."""
    while True:
        (first,) = pick_free_ports(1)
        if all(port_free(first + offset) for offset in range(1, count)):
            return first


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="module")
def dp_tiered(mesh_model_path: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[DpTieredMesh]:
    l3_dir = tmp_path_factory.mktemp("dp-hicache") / "l3"
    metrics_port = consecutive_free_ports(2)
    with start_mesh(mesh_model_path, *TIERED_FLAGS, "--dp-size", "2",
                    "--hicache-storage-dir", str(l3_dir),
                    "--hicache-metrics-port", str(metrics_port), worker="model") as mesh:
        wait_replicas_ready(mesh, 2)
        yield DpTieredMesh(mesh, l3_dir, [f"http://127.0.0.1:{metrics_port + i}/metrics"
                                          for i in range(2)])
        assert mesh.process.poll() is None, f"the mesh ended: {''.join(mesh.output[-20:])}"


def complete(mesh: MeshProcess, prompt: Sequence[int], salt: str | None = None
             ) -> tuple[list[int], int]:
    """(greedy output, prompt tokens served from a cache)."""
    async def send() -> tuple[list[int], int]:
        async with AsyncClient(mesh.grpc_address) as client:
            done = await client.complete(input_ids=list(prompt), cache_salt=salt, **GREEDY)
            return list(done.token_ids), done.usage["prompt_tokens_details"]["cached_tokens"]
    return asyncio.run(send())


def load(mesh: MeshProcess, replica: int) -> SchedulerLoad:
    async def ask() -> SchedulerLoad:
        async with grpc.aio.insecure_channel(mesh.internal[f"scheduler-{replica}"]) as channel:
            reply = await internal_pb2_grpc.SchedulerStub(channel).GetLoad(common_pb2.Empty())
            return wire.scheduler_load_from_proto(reply)
    return asyncio.run(ask())


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {WAIT_S:.0f}s"
        time.sleep(0.1)


def prompt(seed: int, length: int) -> list[int]:
    draw = random.Random(seed)
    return [draw.randrange(3, 200) for _ in range(length)]


def test_a_history_one_replica_wrote_to_l3_is_read_from_it_by_the_other(
        dp_tiered: DpTieredMesh) -> None:
    mesh = dp_tiered.mesh
    history = prompt(1, HISTORY_TOKENS)
    longer = history + prompt(2, PROMPT_TOKENS - HISTORY_TOKENS)
    before = [load(mesh, i) for i in range(2)]
    _, cached = complete(mesh, history)
    assert cached == 0
    after_first = [load(mesh, i) for i in range(2)]
    assert after_first[0].num_prompt_tokens - before[0].num_prompt_tokens == HISTORY_TOKENS
    assert after_first[1].num_prompt_tokens == before[1].num_prompt_tokens
    # Replica 0 writes its pages through to host memory, then to L3: wait for the files.
    wait_for(lambda: len(page_files(dp_tiered.l3_dir)) >= HISTORY_TOKENS // PAGE_SIZE,
             "replica 0's pages in L3")
    keys = page_keys(namespace_root(dp_tiered.l3_dir), history, PAGE_SIZE)
    wait_for(lambda: set(keys) <= set(page_files(dp_tiered.l3_dir)), "the history's pages")

    output, cached = complete(mesh, longer)
    after = [load(mesh, i) for i in range(2)]
    assert after[1].num_prompt_tokens - after_first[1].num_prompt_tokens == PROMPT_TOKENS
    assert cached == HISTORY_TOKENS  # every page of the history, from the files
    assert after[1].cached_tokens_storage - before[1].cached_tokens_storage == HISTORY_TOKENS
    assert after[0].cached_tokens_storage == before[0].cached_tokens_storage
    # A salt shares no page: the same prompt computed from scratch gives the same tokens.
    reference, cached = complete(mesh, longer, salt="from-scratch")
    assert cached == 0 and output == reference
    # Each replica's hicache service counts its own transfers.
    stored, prefetched = (samples(scrape(url)) for url in dp_tiered.metrics_urls)
    assert prefetched["radixmesh:hicache_prefetched_tokens_total"] >= HISTORY_TOKENS
    assert stored["radixmesh:hicache_prefetched_tokens_total"] == 0
    assert stored["radixmesh:hicache_stored_tokens_total"] >= HISTORY_TOKENS


def service_pid(mesh: MeshProcess, name: str) -> int:
    """The pid of `up`'s child serving `name` (found by its port on its command line)."""
    service, port = name.rsplit("-", 1)[0], mesh.internal[name].rsplit(":", 1)[1]
    for pid in child_pids(mesh.process.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if service in argv and port in argv:
            return pid
    raise AssertionError(f"no {name} under radixmesh up")


def host_pools(pid: int) -> set[str]:
    """The hicache host pools (shared memory segments) process `pid` has mapped."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(SHM_PREFIX, 1)[1].split()[0] for line in maps if SHM_PREFIX in line}


def test_each_replica_maps_the_host_pool_of_its_own_hicache_service(
        dp_tiered: DpTieredMesh) -> None:
    """Both replicas have served (the test above), so each worker has attached its pool."""
    mesh = dp_tiered.mesh
    pools = [host_pools(service_pid(mesh, f"worker-{i}")) for i in range(2)]
    owners = [host_pools(service_pid(mesh, f"hicache-{i}")) for i in range(2)]
    assert all(len(pool) == 1 for pool in pools) and pools[0] != pools[1], pools
    assert pools == owners


def test_a_replicas_hicache_restart_leaves_the_other_replica_alone(
        dp_tiered: DpTieredMesh) -> None:
    """After the first test, which left `history` with replica 0 and `longer` with replica 1:
    the dispatch sends what extends either to the replica holding it."""
    mesh = dp_tiered.mesh
    history = prompt(1, HISTORY_TOKENS)
    longer = history + prompt(2, PROMPT_TOKENS - HISTORY_TOKENS)
    killed, kept = service_pid(mesh, "hicache-1"), service_pid(mesh, "hicache-0")
    pool_0 = host_pools(service_pid(mesh, "worker-0"))
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: service_pid_or_none(mesh, "hicache-1") not in (None, killed)
             and is_serving(mesh.internal["hicache-1"], timeout=0.5), "hicache-1's restart")
    restarted = service_pid(mesh, "hicache-1")
    turns = iter(range(3, 1000))

    def replica_1_on_the_new_pool() -> bool:
        # Replica 1's scheduler finds its hicache service gone at its next call (a lookup of
        # the new tokens, a store of the new pages) and attaches to the new one, whose pool
        # its worker maps with the next step plan. Served all the while.
        output, _ = complete(mesh, longer + prompt(next(turns), 3 * PAGE_SIZE))
        assert len(output) == GREEDY["max_new_tokens"]
        pools = host_pools(restarted)
        return bool(pools) and host_pools(service_pid(mesh, "worker-1")) == pools

    wait_for(replica_1_on_the_new_pool, "replica 1 on its restarted hicache service")
    # Replica 0 kept its service and its pool, and serves its history from its cache.
    before = load(mesh, 0).num_prompt_tokens
    _, cached = complete(mesh, history + [7, 8, 9, 10])
    assert load(mesh, 0).num_prompt_tokens - before == HISTORY_TOKENS + 4
    assert cached >= HISTORY_TOKENS - PAGE_SIZE
    assert service_pid(mesh, "hicache-0") == kept
    assert host_pools(service_pid(mesh, "worker-0")) == pool_0


def service_pid_or_none(mesh: MeshProcess, name: str) -> int | None:
    try:
        return service_pid(mesh, name)
    except AssertionError:
        return None
