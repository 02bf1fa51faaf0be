"""Poisoned messages sent straight to the internal services, as a foreign or broken peer would:
each service checks its own entry (design §11), and a bad request in a batch is refused alone
while the stream it came on, the other requests and the mesh go on.

Before the entry checks, a prompt longer than the context sent to the scheduler's Submit
reached the worker, whose step failed with an IndexError, and the whole mesh went down.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import aiohttp
import grpc
import pytest

from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.request_checks import decode_refused_rids
from radixmesh.shared.requests import TokenDelta, TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan
from radixmesh.shared.token_batch import DetokenizeRegistration, TokenBatch
from tests.mesh.conftest import ServiceStarter

from .conftest import MeshProcess
from .internal_client import TextSubscriber

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
GREEDY = SamplingParams(max_new_tokens=4, temperature=0)


def request(rid: str, ids: tuple[int, ...] = (5, 6, 7), **sampling: object) -> TokenizedRequest:
    return TokenizedRequest(rid, ids, SamplingParams(**{"max_new_tokens": 4, "temperature": 0,
                                                        **sampling}))


# (rid, request, a word the refusal must hold)
SUBMIT_POISONS = [
    ("past-context", request("past-context", (5,) * 3000), "context length"),
    ("fills-context", request("fills-context", (5,) * 2040, max_new_tokens=100), "context"),
    ("outside-vocab", request("outside-vocab", (5, 10**6)), "vocabulary"),
    ("negative-id", request("negative-id", (5, -3)), "vocabulary"),
    ("many-stops", request("many-stops", stop=tuple(f"s{i}" for i in range(65))), "stop"),
    ("long-stop", request("long-stop", stop=("x" * 513,)), "stop"),
    ("nan-temperature", request("nan-temperature", temperature=math.nan), "temperature"),
    ("no-tokens", request("no-tokens", max_new_tokens=0), "max_new_tokens"),
    ("bad-stop-id", request("bad-stop-id", stop_token_ids=(10**6,)), "stop_token_ids"),
    ("ctrl\nrid", request("ctrl\nrid"), None),  # no id to answer: dropped, and logged
]


async def submit_poisons_beside_good_ones(mesh: MeshProcess) -> tuple[dict, bool]:
    async with TextSubscriber(mesh.internal["detokenizer"]) as text, \
            grpc.aio.insecure_channel(mesh.internal["scheduler"]) as channel:
        submit = internal_pb2_grpc.SchedulerStub(channel).Submit()
        batch = [request("good-1"), *(poison for _, poison, _ in SUBMIT_POISONS),
                 request("good-2")]
        await submit.write(internal_pb2.RequestBatch(
            requests=[wire.tokenized_request_to_proto(r) for r in batch]))
        answered = [rid for rid, _, word in SUBMIT_POISONS if word is not None]
        await text.wait_finished(["good-1", "good-2", *answered])
        # The same stream takes the next batch: it was never broken.
        await submit.write(internal_pb2.RequestBatch(
            requests=[wire.tokenized_request_to_proto(request("good-3"))]))
        await text.wait_finished(["good-3"])
        still_open = not submit.done()
        submit.cancel()
        return dict(text.finishes), still_open


async def http_health_and_one_request(mesh: MeshProcess) -> tuple[int, int]:
    async with aiohttp.ClientSession() as http:
        async with http.get(mesh.http_url + "/health") as health:
            status = health.status
        async with http.post(mesh.http_url + "/v1/completions",
                             json={"prompt": "hello", "max_tokens": 4}) as completion:
            return status, completion.status


def test_scheduler_refuses_bad_requests_of_a_batch_alone(edge_mesh: MeshProcess):
    finishes, still_open = asyncio.run(submit_poisons_beside_good_ones(edge_mesh))
    assert still_open
    for rid in ("good-1", "good-2", "good-3"):
        assert finishes[rid].finish.type == "length", finishes[rid]
    for rid, _, word in SUBMIT_POISONS:
        if word is None:
            assert rid not in finishes
            continue
        assert finishes[rid].finish.type == "abort", rid
        assert word in finishes[rid].finish.message, finishes[rid]
    assert asyncio.run(http_health_and_one_request(edge_mesh)) == (200, 200)
    assert edge_mesh.process.poll() is None


# ---- the detokenizer's Tokens stream ---------------------------------------------------------


async def tokens_with_poisons(address: str) -> dict[str, internal_pb2.TextDelta]:
    registrations = [DetokenizeRegistration("good", (), (5, 6), 2),
                     DetokenizeRegistration("many-stops", tuple(f"s{i}" for i in range(65)),
                                            (5,), 1),
                     DetokenizeRegistration("long-stop", ("y" * 513,), (5,), 1),
                     DetokenizeRegistration("negative-prompt", (), (-4,), 1),
                     DetokenizeRegistration("negative-output", (), (5,), 1)]
    deltas = [TokenDelta(reg.rid, [40, 41]) for reg in registrations]
    deltas[-1] = TokenDelta("negative-output", [40, -9])
    async with TextSubscriber(address) as text:
        tokens = text.detokenizer.Tokens()
        await tokens.write(wire.token_batch_to_proto(TokenBatch(registrations, deltas)))
        await text.wait_finished([reg.rid for reg in registrations[1:]])
        # The stream goes on: the good request's next tokens still come through.
        await tokens.write(wire.token_batch_to_proto(TokenBatch([], [TokenDelta("good", [42])])))
        await text.wait_for(lambda: len(text.text.get("good", "")) > 0)
        assert not tokens.done()
        tokens.cancel()
        return dict(text.finishes)


def test_detokenizer_refuses_bad_registrations_and_tokens_alone(services: ServiceStarter,
                                                                 mesh_model_path: Path):
    detokenizer = services.start("detokenizer", "--model-path", str(mesh_model_path))
    finishes = asyncio.run(tokens_with_poisons(detokenizer.address))
    assert "good" not in finishes
    for rid, word in (("many-stops", "stop"), ("long-stop", "stop"),
                      ("negative-prompt", "refused"), ("negative-output", "decode")):
        assert finishes[rid].finish.type == "abort", rid
        assert word in finishes[rid].finish.message, finishes[rid]
    assert detokenizer.process.poll() is None


# ---- the worker's Execute stream ---------------------------------------------------------------


def good_plan(step_id: int, rid: str) -> StepPlan:
    return StepPlan(step_id, new_requests=[NewRequest(rid, (5, 6, 7), 3, 0, (), GREEDY)],
                    page_writes=[PageTableWrite(rid, 0, (1,))],
                    extends=[ExtendChunk(rid, 0, 3, True)])


async def execute(address: str, plan: StepPlan) -> internal_pb2.StepResult:
    async with grpc.aio.insecure_channel(address) as channel:
        call = internal_pb2_grpc.WorkerStub(channel).Execute()
        await call.write(wire.plan_to_proto(plan))
        try:
            return await call.read()
        finally:
            call.cancel()


def test_worker_refuses_a_bad_plan_whole_naming_its_requests(services: ServiceStarter,
                                                             mesh_model_path: Path):
    worker = services.start("worker", "--worker", "null", "--model-path", str(mesh_model_path))
    bad = good_plan(1, "fine")
    bad.new_requests.append(NewRequest("too-long", (5,) * 3000, 3000, 0, (), GREEDY))
    bad.new_requests.append(NewRequest("outside-vocab", (5, 10**6), 2, 0, (), GREEDY))
    bad.extends.append(ExtendChunk("fine", 2040, 100, True))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        asyncio.run(execute(worker.address, bad))
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(decode_refused_rids(refused.value.trailing_metadata())) == {
        "too-long", "outside-vocab", "fine"}
    assert "context length" in refused.value.details()
    # Nothing of the refused plan was applied: the same request ids start afresh.
    result = asyncio.run(execute(worker.address, good_plan(1, "fine")))
    assert list(result.rids) == ["fine"]
    with grpc.insecure_channel(worker.address) as channel:
        internal_pb2_grpc.WorkerStub(channel).GetInfo(common_pb2.Empty(), timeout=10)
    assert worker.process.poll() is None
