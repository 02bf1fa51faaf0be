"""The router in front of three real nodes (null-worker meshes registered in a real Redis):
the official `openai` client and the gRPC client stream through it, a conversation's rounds
stay on the node holding its history while fresh conversations spread, a hot prefix spreads,
HTTP server info lists the nodes, a request whose node fails before its first token completes
on another, and a node killed mid-run ends its streams with UNAVAILABLE while new requests
complete elsewhere, until it comes back."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import openai
import pytest

from radixmesh.cli import main
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from tests.router.conftest import NODE_IDS, Nodes, Router, start_router
from tests.router.failing_node import failing_node

SYSTEM = "You are a careful assistant. " * 24  # a long shared history


def sent_per_node(router: Router) -> dict[str, int]:
    return {node_id: node["requests"] for node_id, node in router.nodes().items()}


def served_by(router: Router, before: dict[str, int]) -> list[str]:
    after = sent_per_node(router)
    return [node for node, count in after.items() if count > before.get(node, 0)]


def test_fresh_conversations_in_turn_land_on_different_nodes(router: Router) -> None:
    # First in the module: no node holds anything yet. Each conversation opens with the same
    # BOS and chat template; one after the other, on idle nodes, they spread.
    client = openai.OpenAI(base_url=f"{router.http_url}/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    nodes = []
    for conversation in range(3):
        before = sent_per_node(router)
        client.chat.completions.create(model=model, max_tokens=4, messages=[
            {"role": "user", "content": f"Topic {conversation}: " + "tell me more. " * 20}])
        nodes += served_by(router, before)
    assert sorted(nodes) == sorted(NODE_IDS), nodes


def test_openai_client_streams_through_the_router(router: Router) -> None:
    client = openai.OpenAI(base_url=f"{router.http_url}/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    finishes = [choice.finish_reason for chunk in chunks for choice in chunk.choices
                if choice.finish_reason]
    assert finishes == ["length"]
    whole = client.completions.create(model=model, prompt="hello there", max_tokens=5)
    assert whole.usage.completion_tokens == 5 and whole.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError):  # the node's checks, answered through
        client.completions.create(model=model, prompt="x", max_tokens=5, temperature=-1)


def test_grpc_client_streams_token_ids_through_the_router(router: Router) -> None:
    with grpc.insecure_channel(router.grpc_address) as channel:
        stub = generate_pb2_grpc.GenerationStub(channel)
        request = generate_pb2.GenerateRequest(
            text="hello", sampling=common_pb2.SamplingParams(max_new_tokens=6, ignore_eos=True))
        replies = list(stub.Generate(request, timeout=30))
        info = stub.GetModelInfo(common_pb2.Empty(), timeout=10)
    assert sum(len(reply.token_ids) for reply in replies) == 6
    assert replies[-1].finish.type == "length" and replies[-1].usage.completion_tokens == 6
    assert info.vocab_size > 0


def test_a_conversation_stays_on_the_node_holding_its_history(router: Router) -> None:
    client = openai.OpenAI(base_url=f"{router.http_url}/v1", api_key="none", max_retries=0)
    model = client.models.list().data[0].id
    for conversation in range(2):
        prompt, nodes = f"Conversation {conversation}. " + SYSTEM, []
        for round_ in range(4):
            before = sent_per_node(router)
            answer = client.completions.create(model=model, prompt=prompt, max_tokens=8)
            nodes += served_by(router, before)
            prompt += answer.choices[0].text + f" Question {round_}?"
        assert len(nodes) == 4 and len(set(nodes)) == 1, nodes  # every round on one node


def test_http_server_info_lists_the_nodes(router: Router) -> None:
    with urllib.request.urlopen(f"{router.http_url}/get_server_info", timeout=10) as reply:
        document = json.load(reply)
    assert document["policy"] == "cache_aware" and document["model_info"]["vocab_size"] > 0
    by_id = {node["node_id"]: node for node in document["nodes"]}
    assert set(by_id) == set(NODE_IDS)  # as gRPC GetServerInfo lists them
    assert all(node["usable"] and node["requests"] > 0 for node in by_id.values())


def test_a_node_failing_before_its_first_token_is_retried_elsewhere(
        nodes: Nodes, router: Router) -> None:
    real = nodes.meshes[NODE_IDS[0]].grpc_address
    request = generate_pb2.GenerateRequest(
        text="retry me", sampling=common_pb2.SamplingParams(max_new_tokens=6, ignore_eos=True))
    with grpc.insecure_channel(real) as channel:
        stub = generate_pb2_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(common_pb2.Empty(), timeout=10)
        direct = [list(reply.token_ids) for reply in stub.Generate(request, timeout=30)]
    # Round robin over the failing node and one real node; a failed node waits out a long
    # backoff, so it is tried exactly once.
    with failing_node(info) as (address, failing), start_router(
            nodes.model_path, "--node-urls", f"{address},{real}", "--policy", "round_robin",
            "--node-retry-backoff", "60", "--node-retry-backoff-max", "60") as pair:
        pair.wait_nodes({address, real})
        with grpc.insecure_channel(pair.grpc_address) as channel:
            stub = generate_pb2_grpc.GenerationStub(channel)
            answers = [[list(reply.token_ids) for reply in stub.Generate(request, timeout=30)]
                       for _ in range(2)]
        report = pair.nodes()
    assert failing.generate_calls == 1
    # Each answer is the real node's, once: nothing of the failed attempt, nothing twice. (The
    # tokens, not how they were cut into messages: two that come ready together go as one.)
    assert [sum(answer, []) for answer in answers] == [sum(direct, [])] * 2
    assert (report[address]["requests"], report[real]["requests"]) == (1, 2)
    assert not report[address]["usable"]


def test_a_hot_prefix_spreads_within_the_balance_thresholds(router: Router) -> None:
    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(base_url=f"{router.http_url}/v1", api_key="none",
                                    max_retries=0)
        model = (await client.models.list()).data[0].id
        answers = await asyncio.gather(*(client.completions.create(
            model=model, prompt=SYSTEM + f"Hot {index}.", max_tokens=200,
            extra_body={"ignore_eos": True}) for index in range(24)))
        return [answer.choices[0].finish_reason for answer in answers]

    before = sent_per_node(router)
    assert asyncio.run(burst()) == ["length"] * 24
    after = sent_per_node(router)
    spread = {node: after[node] - before.get(node, 0) for node in after}
    assert all(spread[node] > 0 for node in NODE_IDS), spread  # not all on the holder
    assert max(spread.values()) <= 24 * 0.6, spread


def test_bench_pointed_at_the_router_reports_the_spread_over_nodes(
        router: Router, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--workload", "null-worker", "--target", router.grpc_address,
                 "--num-prompts", "30", "--scale", "0.1", "--max-concurrency", "6",
                 "--output-dir", str(tmp_path), "--no-progress"]) == 0
    [path] = tmp_path.glob("null-worker-mesh-*.json")
    spread = json.loads(path.read_text())["node_spread"]
    assert spread["nodes"] == 3 and set(spread["requests_per_node"]) == set(NODE_IDS)
    assert sum(spread["requests_per_node"].values()) == 30
    assert 1 / 3 <= spread["max_share"] <= 1
    assert "spread over 3 nodes: node-0 " in capsys.readouterr().out


def test_a_killed_node_fails_its_streams_and_others_take_new_requests(
        nodes: Nodes, router: Router) -> None:
    request = generate_pb2.GenerateRequest(
        text=SYSTEM, sampling=common_pb2.SamplingParams(max_new_tokens=1500, ignore_eos=True))
    with grpc.insecure_channel(router.grpc_address) as channel:
        stub = generate_pb2_grpc.GenerationStub(channel)
        calls = [stub.Generate(request, timeout=120) for _ in range(6)]
        for call in calls:
            next(call)  # every stream has started
        busy = Counter({node_id: node["in_flight"] for node_id, node in router.nodes().items()})
        victim = busy.most_common(1)[0][0]
        assert busy[victim] > 0
        nodes.kill(victim)
        outcomes = []
        for call in calls:
            try:
                for _ in call:
                    pass
                outcomes.append("done")
            except grpc.RpcError as error:
                outcomes.append(error.code().name)
        assert outcomes.count("UNAVAILABLE") == busy[victim], (outcomes, busy)
        assert outcomes.count("done") == 6 - busy[victim]
        # Not yet started: each completes on a live node, whether or not the router has seen
        # the victim go.
        short = generate_pb2.GenerateRequest(
            text="after", sampling=common_pb2.SamplingParams(max_new_tokens=4, ignore_eos=True))
        for _ in range(6):
            replies = list(stub.Generate(short, timeout=30))
            assert replies[-1].finish.type == "length"
    router.wait_nodes(set(NODE_IDS) - {victim})
    nodes.start(victim)  # a restart: a new epoch, an empty cache
    router.wait_nodes(set(NODE_IDS))
