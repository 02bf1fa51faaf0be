"""A mesh whose worker is a tensor-parallel group (real processes, gloo): the same greedy tokens
as one device, through small prefill chunks and prefix-cache hits; a rank killed mid-run ends
the group's requests with UNAVAILABLE in bounded time, and the group, restarted whole by
`radixmesh up`, serves again (issue 23)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.make_model import make_model
from tests.mesh.conftest import MeshProcess, child_pids, start_mesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
FLAGS = ("--chunked-prefill-size", "8", "--max-total-tokens", "2048")
SHARED = list(range(40, 70))  # a prefix every prompt starts with: later ones hit the cache
PROMPTS = [SHARED + [5, 9, 13], SHARED + [7, 7], SHARED + [2] * 11, list(range(3, 20))]
GREEDY = {"temperature": 0.0, "ignore_eos": True, "max_new_tokens": 12}
WAIT_S = 60.0


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tp-mesh") / "qwen3", "qwen3")


async def complete(address: str, prompt: list[int], **sampling: object) -> list[int]:
    tokens: list[int] = []
    async with AsyncClient(address) as client:
        async for chunk in client.generate(input_ids=prompt, **{**GREEDY, **sampling}):
            tokens.extend(chunk.token_ids)
    return tokens


def outputs(mesh: MeshProcess) -> list[list[int]]:
    """Each prompt's output, one after the other (so each later one finds the shared prefix
    cached), then all at once (one batch)."""
    async def run() -> list[list[int]]:
        one_by_one = [await complete(mesh.grpc_address, prompt) for prompt in PROMPTS]
        together = await asyncio.gather(*(complete(mesh.grpc_address, p) for p in PROMPTS))
        assert list(together) == one_by_one
        return one_by_one
    return asyncio.run(run())


@pytest.fixture(scope="module")
def one_device(model: Path) -> list[list[int]]:
    with start_mesh(model, *FLAGS, worker="model") as mesh:
        return outputs(mesh)


@pytest.fixture(scope="module")
def tp_mesh(model: Path) -> Iterator[MeshProcess]:
    with start_mesh(model, *FLAGS, "--tp-size", "2", "--tp-timeout", "20",
                    worker="model") as mesh:
        yield mesh


def test_a_tp2_mesh_gives_the_one_device_tokens(tp_mesh: MeshProcess,
                                                one_device: list[list[int]]) -> None:
    assert outputs(tp_mesh) == one_device
    assert all(len(tokens) == GREEDY["max_new_tokens"] for tokens in one_device)


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def worker_pid(mesh: MeshProcess) -> int:
    for pid in child_pids(mesh.process.pid):
        if "worker" in command_line(pid):
            return pid
    raise AssertionError("no worker service under radixmesh up")


def follower_pid(worker: int) -> int:
    """Rank 1: the worker's child that multiprocessing spawned to run a rank (its other child
    is multiprocessing's resource tracker)."""
    (rank,) = [pid for pid in child_pids(worker)
               if any("spawn_main" in part for part in command_line(pid))]
    return rank


def test_a_rank_killed_mid_run_fails_the_group_and_it_serves_again(
        tp_mesh: MeshProcess, one_device: list[list[int]]) -> None:
    worker = worker_pid(tp_mesh)
    follower = follower_pid(worker)  # rank 1 (rank 0 is the worker service itself)

    async def cut() -> list[BaseException | list[int]]:
        long = {"max_new_tokens": 1500}  # far longer than the test waits
        running = [asyncio.create_task(complete(tp_mesh.grpc_address, p, **long))
                   for p in PROMPTS[:2]]
        await asyncio.sleep(1.0)  # streaming by now
        os.kill(follower, signal.SIGKILL)
        return await asyncio.wait_for(asyncio.gather(*running, return_exceptions=True),
                                      WAIT_S)

    started = time.monotonic()
    ended = asyncio.run(cut())
    assert all(isinstance(error, RadixMeshClientError) and error.code == "UNAVAILABLE"
               for error in ended), ended
    assert time.monotonic() - started < WAIT_S
    deadline = time.monotonic() + WAIT_S
    while True:  # `up` restarts the worker, and with it the group
        try:
            assert asyncio.run(complete(tp_mesh.grpc_address, PROMPTS[0])) == one_device[0]
            break
        except RadixMeshClientError as error:
            assert error.code == "UNAVAILABLE", error
            assert time.monotonic() < deadline, "the group did not serve again"
            time.sleep(1.0)
    assert worker_pid(tp_mesh) != worker
