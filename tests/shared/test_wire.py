"""Every dataclass survives a round trip through its proto message."""

from __future__ import annotations

import math

import pytest

from radixmesh.shared import wire
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.protos_gen import common_pb2
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
    NO_COPIES,
    ExtendChunk,
    HostPoolAttachment,
    NewRequest,
    PageCopies,
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
    assert wire.sampling_from_proto(common_pb2.SamplingParams()) == SamplingParams()


def test_partial_sampling_fields_leave_the_rest_unset():
    message = wire.sampling_fields_to_proto({"temperature": 0, "stop": "\n", "seed": None})
    assert message.HasField("temperature") and not message.HasField("seed")
    assert not message.HasField("max_new_tokens") and list(message.stop) == ["\n"]
    assert wire.sampling_from_proto(message) == SamplingParams(temperature=0, stop=("\n",))
    with pytest.raises(TypeError, match="unknown sampling parameter 'temprature'"):
        wire.sampling_fields_to_proto({"temprature": 0})


def test_decoding_checks_nothing_and_validate_names_the_field():
    message = wire.sampling_fields_to_proto({"temperature": math.nan, "top_p": 2.0})
    params = wire.sampling_from_proto(message)
    with pytest.raises(InvalidRequestError, match="temperature: must be finite"):
        params.validate(vocab_size=10)


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


def test_step_plan_host_copies_and_backed_up_through_round_trip():
    plan = StepPlan(3, host_pool=HostPoolAttachment("rmx-pool", 64),
                    loads=PageCopies((4, 5), (9, 1)), backups=PageCopies((7,), (2,)))
    assert wire.plan_from_proto(wire.plan_to_proto(plan)) == plan
    detach = StepPlan(4, host_pool=HostPoolAttachment("", 0))  # set, though empty: unmap
    assert wire.plan_from_proto(wire.plan_to_proto(detach)) == detach
    plain = wire.plan_from_proto(wire.plan_to_proto(StepPlan(5)))
    assert plain.host_pool is None and plain.loads is NO_COPIES and plain.backups is NO_COPIES
    result = StepResult(3, ["r"], [1], backed_up_through=2)
    assert wire.result_from_proto(wire.result_to_proto(result)) == result


def test_copies_of_unequal_lengths_are_refused_not_dropped():
    message = wire.plan_to_proto(StepPlan(6))
    message.loads.host_slots.append(3)
    with pytest.raises(ValueError, match="0 device pages for 1 host slots"):
        wire.plan_from_proto(message)
    message.loads.device_pages.extend([1, 2])
    with pytest.raises(ValueError, match="2 device pages for 1 host slots"):
        wire.plan_from_proto(message)


def test_worker_info_round_trip():
    info = WorkerInfo("m", 100, 4, 2048, 512, (2, 4), "float32", 64, available_memory_gb=1.5,
                      cuda_graph=True, num_layers=32, num_kv_heads=8, head_dim=128,
                      weights_fingerprint="ab" * 32)
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
