"""The Scheduler contract (protos/internal.proto `Scheduler`): what a replacement must do.

The suite plays a tokenizer. A scheduler's output goes to its detokenizer, not back to the
Submit caller, so the suite sees a request served only through GetLoad's counters: the target
must have its worker and detokenizer behind it.
"""

from __future__ import annotations

import asyncio
import uuid

from radixmesh.conformance.runner import Target, expect, greet
from radixmesh.shared import wire
from radixmesh.shared.mesh_info import ModelInfo, SchedulerLoad
from radixmesh.shared.mesh_protocol import Hello
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams

CALLER = Hello("tokenizer", implementation="conformance")
POLL_S = 0.05


def _stub(target: Target) -> internal_pb2_grpc.SchedulerStub:
    return internal_pb2_grpc.SchedulerStub(target.channel)


async def _info(target: Target) -> ModelInfo:
    return wire.model_info_from_proto(
        await _stub(target).GetInfo(common_pb2.Empty(), timeout=target.timeout))


async def _load(target: Target) -> SchedulerLoad:
    return wire.scheduler_load_from_proto(
        await _stub(target).GetLoad(common_pb2.Empty(), timeout=target.timeout))


def _request(name: str, ids: tuple[int, ...]) -> internal_pb2.TokenizedRequest:
    rid = f"conf-{name}-{uuid.uuid4().hex[:8]}"
    return wire.tokenized_request_to_proto(
        TokenizedRequest(rid, ids, SamplingParams(max_new_tokens=2, temperature=0)))


async def check_hello(target: Target) -> None:
    """Hello answers with the mesh protocol version and service "scheduler", naming the
    model GetInfo reports (or none while no worker is connected)."""
    hello = await greet(target, _stub(target).Hello, "scheduler")
    info = await _info(target)
    expect(hello.model_id in ("", info.model_id),
           f"Hello names model {hello.model_id!r}, GetInfo {info.model_id!r}")


async def check_get_info(target: Target) -> None:
    """GetInfo describes the model served: context length, vocabulary size, page size and
    KV capacity (max_total_tokens) above zero, end-of-sequence ids inside the vocabulary."""
    info = await _info(target)
    for name in ("context_len", "vocab_size", "page_size", "max_total_tokens"):
        expect(getattr(info, name) > 0, f"GetInfo {name} is {getattr(info, name)}")
    expect(all(0 <= eos < info.vocab_size for eos in info.eos_token_ids),
           f"eos_token_ids {info.eos_token_ids} outside the vocabulary")


async def check_get_load(target: Target) -> None:
    """GetLoad answers counts that are never negative and a token usage and cache hit rate
    between 0 and 1."""
    load = await _load(target)
    for name in load.__dataclass_fields__:
        value = getattr(load, name)
        expect(value >= 0, f"GetLoad {name} is {value}")
    expect(load.token_usage <= 1.0, f"token_usage {load.token_usage} above 1")
    expect(load.cache_hit_rate <= 1.0, f"cache_hit_rate {load.cache_hit_rate} above 1")


async def check_bad_request_refused_alone(target: Target) -> None:
    """A request with a token id outside the vocabulary, submitted in one batch beside a good
    one, is refused on its own: the Submit stream stays open, the good request is served
    (GetLoad's generated tokens grow) and a later batch on the same stream is taken too."""
    info = await _info(target)
    before = (await _load(target)).num_generated_tokens
    submit = _stub(target).Submit(metadata=CALLER.stream_metadata(
        await greet(target, _stub(target).Hello, "scheduler")))
    try:
        good = (5 % info.vocab_size, 6 % info.vocab_size)
        await submit.write(internal_pb2.RequestBatch(requests=[
            _request("bad", (good[0], info.vocab_size)), _request("good", good)]))
        async with asyncio.timeout(target.timeout):
            while (await _load(target)).num_generated_tokens <= before:
                expect(not submit.done(), "the Submit stream ended after a bad request")
                await asyncio.sleep(POLL_S)
        later = (await _load(target)).num_generated_tokens
        await submit.write(internal_pb2.RequestBatch(requests=[_request("later", good)]))
        async with asyncio.timeout(target.timeout):
            while (await _load(target)).num_generated_tokens <= later:
                expect(not submit.done(), "the Submit stream ended after a bad request")
                await asyncio.sleep(POLL_S)
    finally:
        submit.cancel()


CHECKS = (check_hello, check_get_info, check_get_load, check_bad_request_refused_alone)
