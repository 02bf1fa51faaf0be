"""Every dataclass survives a round trip through its proto message."""

from __future__ import annotations

from radixmesh.shared import wire
from radixmesh.shared.requests import (
    FinishKind,
    FinishReason,
    TextDelta,
    TokenDelta,
    TokenizedRequest,
    Usage,
)
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import (
    ExtendChunk,
    NewRequest,
    PageTableWrite,
    StepPlan,
    StepResult,
    WorkerInfo,
)

PARAMS = SamplingParams(max_new_tokens=7, temperature=0.25, top_p=0.5, top_k=3, min_p=0.125,
                        seed=2**62, stop=("a", "bc"), stop_token_ids=(2, 4), ignore_eos=True,
                        frequency_penalty=-0.5, presence_penalty=1.5, repetition_penalty=1.25)


def test_sampling_params_round_trip_and_unset_fields_take_defaults():
    assert wire.sampling_from_proto(wire.sampling_to_proto(PARAMS)) == PARAMS
    assert wire.sampling_from_proto(wire.sampling_to_proto(SamplingParams())) == SamplingParams()
    unset = wire.sampling_to_proto(SamplingParams())
    unset.ClearField("temperature")
    assert "temperature" not in wire.sampling_body_from_proto(unset)


def test_step_plan_and_result_round_trip():
    plan = StepPlan(
        step_id=9,
        new_requests=[NewRequest("r1", (1, 2, 3), 2, 1, (5,), PARAMS)],
        page_writes=[PageTableWrite("r1", 1, (6, 7))],
        extends=[ExtendChunk("r1", 1, 2, True)],
        decodes=["r0"], released=["old"])
    assert wire.plan_from_proto(wire.plan_to_proto(plan)) == plan
    result = StepResult(9, ["r1", "r0"], [11, 12], cuda_graph=True)
    assert wire.result_from_proto(wire.result_to_proto(result, 0.1, 0.2)) == result


def test_worker_info_round_trip():
    info = WorkerInfo("m", 100, 4, 2048, 512, (2, 4), "float32", 64, available_memory_gb=1.5,
                      cuda_graph=True)
    assert wire.worker_info_from_proto(wire.worker_info_to_proto(info)) == info


def test_deltas_and_finish_reasons_round_trip():
    for finish in (FinishReason(FinishKind.STOP, matched=2), FinishReason(FinishKind.STOP, "\n"),
                   FinishReason(FinishKind.LENGTH), FinishReason(FinishKind.ABORT, message="x")):
        delta = TokenDelta("r", [1, 2], finish, Usage(3, 2, 1))
        assert wire.token_delta_from_proto(wire.token_delta_to_proto(delta)) == delta
        text = TextDelta("r", "hi", [1, 2], finish, Usage(3, 2, 1))
        assert wire.text_delta_from_proto(wire.text_delta_to_proto(text)) == text
    running = TokenDelta("r", [5])
    assert wire.token_delta_from_proto(wire.token_delta_to_proto(running)) == running


def test_tokenized_request_round_trip():
    request = TokenizedRequest("r", (1, 2), PARAMS)
    assert wire.tokenized_request_from_proto(wire.tokenized_request_to_proto(request)) == request
