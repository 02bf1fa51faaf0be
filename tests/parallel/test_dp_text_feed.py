"""With `--dp-size 2` the front door holds ONE subscription to the detokenizer and hands each
delta to the replica's Router that holds its request (issue 23): each delta crosses the wire
once. Failures stay as they were: losing the detokenizer fails every replica's requests and
the front door is down until it is back; losing one replica's scheduler fails that replica's
requests only. Real services on loopback gRPC in this process (dp_in_process.py)."""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import openai
import pytest

from radixmesh.client import AsyncClient, RadixMeshClientError
from tests.mesh.front_door_harness import null_worker, tiny_tokenizer
from tests.parallel.dp_in_process import InProcessDP, in_process_dp

pytestmark = pytest.mark.timeout(180)
HELD_TOKENS = 50  # more than a held request can produce before the test ends it


def expected_tokens(count: int) -> list[int]:
    worker = null_worker()
    return [worker.token_at(position) for position in range(count)]


async def streamed(address: str, prompt: list[int], max_new_tokens: int,
                   rid: str | None = None) -> tuple[list[int], str]:
    """(output tokens, text) as the chunks came, in order."""
    tokens, text = [], ""
    async with AsyncClient(address) as client:
        async for chunk in client.generate(input_ids=prompt, max_new_tokens=max_new_tokens,
                                           temperature=0.0, ignore_eos=True, rid=rid):
            tokens.extend(chunk.token_ids)
            text += chunk.text
    return tokens, text


def replica_of(mesh: InProcessDP, rid: str) -> int:
    return mesh.core.routers.index(mesh.core.feed.owner(rid))


async def held_on_both(mesh: InProcessDP, count: int) -> tuple[list[asyncio.Task], list[int]]:
    """`count` requests started at once (the gate closed: none ends), spread over both
    replicas by load; their tasks, and the replica holding each."""
    rids = [f"held-{i}" for i in range(count)]
    tasks = [asyncio.create_task(streamed(mesh.grpc_address, [11 + i] * 6, HELD_TOKENS, rid))
             for i, rid in enumerate(rids)]
    async with asyncio.timeout(20):
        while mesh.core.num_live < count:
            await asyncio.sleep(0.01)
    replicas = [replica_of(mesh, rid) for rid in rids]
    assert sorted(set(replicas)) == [0, 1], replicas
    return tasks, replicas


async def http_health(mesh: InProcessDP) -> int:
    async with aiohttp.ClientSession() as session, \
            session.get(f"{mesh.http_url}/health") as response:
        return response.status


def test_one_subscription_feeds_both_replicas_in_order(gate: threading.Event) -> None:
    async def scenario() -> None:
        async with in_process_dp(gate) as mesh:
            assert mesh.broadcaster.num_subscribers == 1  # not one per replica
            lengths = [5 + 3 * i for i in range(8)]
            results = await asyncio.gather(*(
                streamed(mesh.grpc_address, [20 + i] * (4 + i), length)
                for i, length in enumerate(lengths)))
            for length, (tokens, text) in zip(lengths, results, strict=True):
                assert tokens == expected_tokens(length)  # every delta, once, in order
                assert text == tiny_tokenizer().decode(tokens)
            served = [(await mesh.scheduler_load(i)).num_prompt_tokens for i in range(2)]
            assert all(served), served  # both replicas took requests

            openai_client = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="none")
            model = mesh.front.config.served_model_name
            whole, pieces = await asyncio.gather(
                openai_client.completions.create(
                    model=model, prompt=[[40, 41, 42]], max_tokens=12, temperature=0,
                    extra_body={"ignore_eos": True}),
                openai_client.completions.create(
                    model=model, prompt=[[50, 51, 52]], max_tokens=12, temperature=0,
                    stream=True, extra_body={"ignore_eos": True}))
            streamed_text = "".join([chunk.choices[0].text async for chunk in pieces
                                     if chunk.choices])
            expected_text = tiny_tokenizer().decode(expected_tokens(12))
            assert whole.choices[0].text == streamed_text == expected_text
            await openai_client.close()

            feed = mesh.core.feed
            assert feed.deltas_unclaimed == 0  # no copy of another replica's delta came
            assert feed.deltas_received > 0
            assert mesh.broadcaster.num_subscribers == 1

    asyncio.run(scenario())


def test_losing_the_detokenizer_fails_every_replica_until_it_is_back(
        gate: threading.Event) -> None:
    async def scenario() -> None:
        async with in_process_dp(gate) as mesh:
            gate.clear()
            tasks, _ = await held_on_both(mesh, 4)
            await mesh.stop("detokenizer")
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(outcome, RadixMeshClientError)
                       and outcome.code == "UNAVAILABLE" for outcome in outcomes), outcomes
            await mesh.wait_front_door_down()
            assert not mesh.front.serving and await http_health(mesh) == 503
            with pytest.raises(RadixMeshClientError) as refused:
                await streamed(mesh.grpc_address, [9] * 4, 3)
            assert refused.value.code == "UNAVAILABLE"
            assert mesh.core.num_live == 0 and mesh.core.feed.owner("held-0") is None

            gate.set()
            mesh.start_detokenizer()
            await mesh.wait_replicas_ready(2)
            assert mesh.broadcaster.num_subscribers == 1
            again = await asyncio.gather(*(streamed(mesh.grpc_address, [60 + i] * 5, 7)
                                           for i in range(4)))
            assert all(tokens == expected_tokens(7) for tokens, _ in again)
            assert await http_health(mesh) == 200

    asyncio.run(scenario())


def test_losing_one_scheduler_fails_only_its_replica(gate: threading.Event) -> None:
    async def scenario() -> None:
        async with in_process_dp(gate) as mesh:
            gate.clear()
            tasks, replicas = await held_on_both(mesh, 4)
            await mesh.stop("scheduler-1")
            lost = [task for task, replica in zip(tasks, replicas, strict=True) if replica == 1]
            kept = [task for task, replica in zip(tasks, replicas, strict=True) if replica == 0]
            outcomes = await asyncio.gather(*lost, return_exceptions=True)
            assert all(isinstance(outcome, RadixMeshClientError)
                       and outcome.code == "UNAVAILABLE" for outcome in outcomes), outcomes
            await mesh.wait_replicas_ready(1)
            assert mesh.front.serving and mesh.broadcaster.num_subscribers == 1
            assert not any(task.done() for task in kept)  # the other replica's go on

            gate.set()
            for tokens, _ in await asyncio.gather(*kept):
                assert tokens == expected_tokens(HELD_TOKENS)
            during = await asyncio.gather(*(streamed(mesh.grpc_address, [70 + i] * 5, 6)
                                            for i in range(3)))
            assert all(tokens == expected_tokens(6) for tokens, _ in during)

            mesh.start_scheduler(1)
            await mesh.wait_replicas_ready(2)
            assert mesh.broadcaster.num_subscribers == 1

    asyncio.run(scenario())
