"""The Worker contract (protos/internal.proto `Worker`): what a replacement worker must do.

The suite plays the scheduler: it greets the worker, reads its info, and drives an Execute
stream with plans built as `shared/step.py` describes (one result per plan, in order).
"""

from __future__ import annotations

import grpc

from radixmesh.conformance.runner import Target, expect, greet
from radixmesh.shared import wire
from radixmesh.shared.mesh_protocol import Hello
from radixmesh.shared.protos_gen import common_pb2, internal_pb2_grpc
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import (
    ExtendChunk,
    NewRequest,
    PageTableWrite,
    StepPlan,
    StepResult,
    WorkerInfo,
)

CALLER = Hello("scheduler", implementation="conformance")
GREEDY = SamplingParams(max_new_tokens=4, temperature=0)
PROMPT_LEN = 3


def _stub(target: Target) -> internal_pb2_grpc.WorkerStub:
    return internal_pb2_grpc.WorkerStub(target.channel)


async def _info(target: Target) -> WorkerInfo:
    return wire.worker_info_from_proto(
        await _stub(target).GetInfo(common_pb2.Empty(), timeout=target.timeout))


def _prefill(step_id: int, rid: str, info: WorkerInfo) -> StepPlan:
    """A new request of a short prompt, with pages for it and a few decodes, sampled."""
    prompt = tuple((5 + i) % info.vocab_size for i in range(PROMPT_LEN))
    num_pages = -(-(PROMPT_LEN + 4) // info.page_size)
    return StepPlan(step_id,
                    new_requests=[NewRequest(rid, prompt, PROMPT_LEN, 0, (), GREEDY)],
                    page_writes=[PageTableWrite(rid, 0, tuple(range(1, num_pages + 1)))],
                    extends=[ExtendChunk(rid, 0, PROMPT_LEN, True)])


class _Execute:
    """One Execute stream, opened as the scheduler opens it: after a Hello, with metadata
    naming the greeted instance."""

    def __init__(self, target: Target, peer: Hello) -> None:
        self._target = target
        self.call = _stub(target).Execute(metadata=target.caller.stream_metadata(peer))

    async def step(self, plan: StepPlan) -> StepResult:
        await self.call.write(wire.plan_to_proto(plan))
        message = await self.call.read()
        expect(message is not grpc.aio.EOF, f"the stream ended instead of answering step "
               f"{plan.step_id}")
        result = wire.result_from_proto(message)
        expect(result.step_id == plan.step_id,
               f"step {plan.step_id} answered with step id {result.step_id}")
        return result

    async def close(self) -> None:
        await self.call.done_writing()
        self.call.cancel()


def _sampled(result: StepResult, rid: str, info: WorkerInfo) -> int:
    expect(result.rids == [rid], f"step {result.step_id} sampled for {result.rids}, not [{rid!r}]")
    expect(len(result.next_token_ids) == 1, f"step {result.step_id} returned "
           f"{len(result.next_token_ids)} tokens for one request")
    token = result.next_token_ids[0]
    expect(0 <= token < info.vocab_size, f"sampled token {token} is outside the vocabulary "
           f"[0, {info.vocab_size})")
    return token


async def check_hello(target: Target) -> None:
    """Hello answers with the mesh protocol version, service "worker", the model id GetInfo
    reports and, for a worker that holds KV (kv_dtype other than "none"), its page layout
    matching GetInfo."""
    hello = await greet(target, _stub(target).Hello, "worker")
    info = await _info(target)
    expect(hello.model_id == info.model_id,
           f"Hello names model {hello.model_id!r}, GetInfo {info.model_id!r}")
    if info.kv_dtype != "none":
        expect(hello.layout is not None, "a worker that holds KV sends no layout in Hello")
        assert hello.layout is not None
        got = (hello.layout.page_size, hello.layout.num_layers, hello.layout.num_kv_heads,
               hello.layout.head_dim, hello.layout.dtype)
        want = (info.page_size, info.num_layers, info.num_kv_heads, info.head_dim, info.kv_dtype)
        expect(got == want, f"Hello's layout {got} differs from GetInfo's {want}")


async def check_get_info(target: Target) -> None:
    """GetInfo describes a usable pool and model: pages, page size, context length and
    vocabulary size all above zero, end-of-sequence ids inside the vocabulary."""
    info = await _info(target)
    for name in ("num_pages", "page_size", "context_len", "vocab_size"):
        expect(getattr(info, name) > 0, f"GetInfo {name} is {getattr(info, name)}")
    expect(all(0 <= eos < info.vocab_size for eos in info.eos_token_ids),
           f"eos_token_ids {info.eos_token_ids} outside the vocabulary")


async def check_prefill_decode_release(target: Target) -> None:
    """On an Execute stream opened after Hello, a plan that registers a short prompt, grants
    its pages and extends it with sample=True answers one token in the vocabulary; a decode
    step continues the request with one more; a plan that releases it answers a result
    with no tokens, and the released id can then be registered afresh."""
    info = await _info(target)
    expect((PROMPT_LEN + 4) <= info.context_len and
           -(-(PROMPT_LEN + 4) // info.page_size) <= info.num_pages, "the pool is too small")
    peer = await greet(target, _stub(target).Hello, "worker")
    stream = _Execute(target, peer)
    try:
        _sampled(await stream.step(_prefill(1, "conf-a", info)), "conf-a", info)
        _sampled(await stream.step(StepPlan(2, decodes=["conf-a"])), "conf-a", info)
        released = await stream.step(StepPlan(3, released=["conf-a"]))
        expect(not released.rids and not released.next_token_ids,
               f"a release-only step sampled {released.next_token_ids}")
        # Registering the same id again only works if the release dropped it.
        _sampled(await stream.step(_prefill(4, "conf-a", info)), "conf-a", info)
    finally:
        await stream.close()


async def check_new_stream_resets(target: Target) -> None:
    """A second Execute stream, opened after the first closed, is accepted and starts from a
    clean worker: a request the first stream left registered is forgotten, so the same id
    can be registered again (a restarted scheduler must not inherit its predecessor's
    requests)."""
    info = await _info(target)
    first = _Execute(target, await greet(target, _stub(target).Hello, "worker"))
    try:
        _sampled(await first.step(_prefill(1, "conf-left", info)), "conf-left", info)
    finally:
        await first.close()
    second = _Execute(target, await greet(target, _stub(target).Hello, "worker"))
    try:
        _sampled(await second.step(_prefill(1, "conf-left", info)), "conf-left", info)
    finally:
        await second.close()


async def check_out_of_vocabulary_refused(target: Target) -> None:
    """A plan naming a token id outside the vocabulary is refused whole with INVALID_ARGUMENT
    (before any of it applies), and the service lives on: GetInfo answers and a new stream
    serves a good plan."""
    info = await _info(target)
    plan = _prefill(1, "conf-bad", info)
    bad = plan.new_requests[0]
    plan.new_requests[0] = NewRequest(bad.rid, (*bad.token_ids[:-1], info.vocab_size),
                                      bad.num_prompt_tokens, 0, (), GREEDY)
    stream = _Execute(target, await greet(target, _stub(target).Hello, "worker"))
    try:
        try:
            result = await stream.step(plan)
        except grpc.aio.AioRpcError as error:
            expect(error.code() is grpc.StatusCode.INVALID_ARGUMENT,
                   f"refused with {error.code().name}, not INVALID_ARGUMENT: {error.details()}")
        else:
            expect(False, f"a plan with token id {info.vocab_size} (the vocabulary is "
                   f"{info.vocab_size}) was served: {result.next_token_ids}")
    finally:
        stream.call.cancel()
    await _info(target)
    again = _Execute(target, await greet(target, _stub(target).Hello, "worker"))
    try:
        _sampled(await again.step(_prefill(1, "conf-bad", info)), "conf-bad", info)
    finally:
        await again.close()


CHECKS = (check_hello, check_get_info, check_prefill_decode_release, check_new_stream_resets,
          check_out_of_vocabulary_refused)
