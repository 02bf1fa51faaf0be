"""Data parallelism through the mesh (real processes): `up --dp-size 2` runs two scheduler +
worker replicas behind one front door; a conversation's follow-up lands on the replica that
holds its history (its prompt comes from that replica's cache), both replicas take work, and
with one replica's scheduler killed the other keeps serving (issue 23)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, internal_pb2_grpc
from tests.mesh.conftest import MeshProcess, child_pids, start_mesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
HISTORY_TOKENS, CONVERSATIONS = 64, 6
WAIT_S = 60.0


@pytest.fixture(scope="module")
def dp_mesh(mesh_model_path: Path) -> Iterator[MeshProcess]:
    # A long context, so a null-worker request can outlast every step of a test.
    with start_mesh(mesh_model_path, "--dp-size", "2", "--page-size", "1",
                    "--context-length", "200000", worker="null") as mesh:
        # `up` is up once the front door serves, which it does from its first replica on.
        wait_replicas_ready(mesh, 2)
        yield mesh


def wait_replicas_ready(mesh: MeshProcess, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        metrics = urllib.request.urlopen(f"{mesh.http_url}/metrics", timeout=5).read().decode()
        ready = [line for line in metrics.splitlines()
                 if line.startswith("radixmesh:dp_replicas_ready{")]
        if ready and float(ready[0].rsplit(" ", 1)[1]) == count:
            return
        assert time.monotonic() < deadline, f"not {count} replicas ready: {ready}"
        time.sleep(0.2)


async def complete(address: str, prompt: list[int], max_new_tokens: int = 4
                   ) -> tuple[list[int], int]:
    """(output tokens, prompt tokens served from the cache)."""
    tokens, cached = [], 0
    async with AsyncClient(address) as client:
        async for chunk in client.generate(input_ids=prompt, max_new_tokens=max_new_tokens,
                                           temperature=0.0, ignore_eos=True):
            tokens.extend(chunk.token_ids)
            if chunk.usage:
                cached = chunk.usage["prompt_tokens_details"]["cached_tokens"]
    return tokens, cached


def prompt_tokens(address: str) -> int:
    async def ask() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            load = await internal_pb2_grpc.SchedulerStub(channel).GetLoad(common_pb2.Empty())
            return wire.scheduler_load_from_proto(load).num_prompt_tokens
    return asyncio.run(ask())


def test_follow_ups_land_where_their_history_is(dp_mesh: MeshProcess) -> None:
    histories = [[10 + c] * 4 + list(range(100 + 7 * c, 100 + 7 * c + HISTORY_TOKENS - 4))
                 for c in range(CONVERSATIONS)]

    async def run() -> list[int]:
        for history in histories:  # first turns, one after the other
            await complete(dp_mesh.grpc_address, history)
        cached = []
        for history in histories:
            _, hit = await complete(dp_mesh.grpc_address, history + [7, 8, 9])
            cached.append(hit)
        return cached

    cached = asyncio.run(run())
    assert all(hit >= HISTORY_TOKENS - 1 for hit in cached), cached
    served = [prompt_tokens(dp_mesh.internal[f"scheduler-{i}"]) for i in range(2)]
    assert all(tokens > 0 for tokens in served), served  # both replicas took work


def test_both_replicas_stream_in_order_through_one_subscription(
        dp_mesh: MeshProcess) -> None:
    """Every delta of every request, once and in order, whichever replica ran it: the front
    door reads one detokenizer subscription for both (tests/parallel/test_dp_text_feed.py
    counts it)."""
    lengths = [6 + 5 * i for i in range(6)]

    async def run() -> list[list[int]]:
        outputs = await asyncio.gather(*(complete(dp_mesh.grpc_address, [30 + i] * 5, length)
                                         for i, length in enumerate(lengths)))
        return [tokens for tokens, _ in outputs]

    before = [prompt_tokens(dp_mesh.internal[f"scheduler-{i}"]) for i in range(2)]
    outputs = asyncio.run(run())
    assert [len(tokens) for tokens in outputs] == lengths
    # The null worker's output is one sequence whatever the prompt: each is its prefix.
    assert all(tokens == outputs[-1][:len(tokens)] for tokens in outputs)
    after = [prompt_tokens(dp_mesh.internal[f"scheduler-{i}"]) for i in range(2)]
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)

    client = openai.OpenAI(base_url=f"{dp_mesh.http_url}/v1", api_key="none")
    model = client.models.list().data[0].id
    whole = client.completions.create(model=model, prompt=[[40, 41]], max_tokens=9,
                                      temperature=0, extra_body={"ignore_eos": True})
    pieces = client.completions.create(model=model, prompt=[[50, 51]], max_tokens=9,
                                       temperature=0, stream=True,
                                       extra_body={"ignore_eos": True})
    text = "".join(chunk.choices[0].text for chunk in pieces if chunk.choices)
    assert whole.choices[0].text == text and whole.usage.completion_tokens == 9


def scheduler_pid(mesh: MeshProcess, name: str) -> int:
    port = mesh.internal[name].rsplit(":", 1)[1]
    for pid in child_pids(mesh.process.pid):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        if "scheduler" in argv and port in argv:
            return pid
    raise AssertionError(f"no {name} under radixmesh up")


def test_the_other_replica_serves_while_one_is_down(dp_mesh: MeshProcess) -> None:
    async def cut() -> tuple[list, list]:
        # Requests on both replicas, long enough to be running when the kill lands.
        running = [asyncio.create_task(complete(dp_mesh.grpc_address, [3 + i] * 8, 100_000))
                   for i in range(4)]
        await asyncio.sleep(1.0)
        os.kill(scheduler_pid(dp_mesh, "scheduler-1"), signal.SIGKILL)
        await asyncio.sleep(1.0)  # the front door hears its link to scheduler-1 break
        during = [await complete(dp_mesh.grpc_address, [50 + i] * 8) for i in range(6)]
        for task in running:
            task.cancel()
        ended = await asyncio.gather(*running, return_exceptions=True)
        return during, ended

    started = time.monotonic()
    during, ended = asyncio.run(cut())
    assert all(len(tokens) == 4 for tokens, _ in during)
    # Those on the killed replica ended UNAVAILABLE; those on the other were cancelled here.
    assert any(isinstance(error, RadixMeshClientError) and error.code == "UNAVAILABLE"
               for error in ended), ended
    assert time.monotonic() - started < WAIT_S
