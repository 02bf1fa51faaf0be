"""SGLang's `/generate` body -> our request body, and our results -> its answer."""

from __future__ import annotations

import pytest

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.native_protocol import (
    finish_reason,
    generate_answer,
    parse_generate_request,
)
from radixmesh.shared.requests import FinishKind, FinishReason, Usage


def test_sglang_names_become_ours_and_neutral_options_pass() -> None:
    parsed = parse_generate_request({
        "text": "hi", "rid": "r1", "stream": True, "return_logprob": False,
        "sampling_params": {"max_new_tokens": 4, "sampling_seed": 7, "stop": "\n", "n": 1,
                            "no_stop_trim": False, "top_k": 5}})
    assert parsed.body == {"text": "hi", "max_new_tokens": 4, "seed": 7, "stop": ["\n"],
                           "top_k": 5}
    assert (parsed.rid, parsed.stream) == ("r1", True)
    assert parsed.param_name("seed") == "sampling_params.seed"
    assert parse_generate_request({"input_ids": [1, 2]}).body == {"input_ids": [1, 2]}


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({}, "text"),
    ({"input_ids": [[1, 2], [3]]}, "input_ids"),
    ({"text": "hi", "sampling_params": []}, "sampling_params"),
    ({"text": "hi", "sampling_params": {"stop": ["x"] * 1000}}, "sampling_params.stop"),
    ({"text": "hi", "rid": 5}, "rid"),
    ({"text": "hi", "lora_path": "adapter"}, "lora_path"),
    ({"text": "hi", "modalities": []}, "modalities"),
])
def test_bad_bodies_name_their_field(body: object, field: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_generate_request(body)
    assert caught.value.field == field


def test_answers_have_sglangs_shape() -> None:
    assert finish_reason(None, 3) is None
    assert finish_reason(FinishReason(FinishKind.LENGTH), 3) == {"type": "length", "length": 3}
    assert finish_reason(FinishReason(FinishKind.STOP, matched="\n"), 3) == \
        {"type": "stop", "matched": "\n"}
    answer = generate_answer("r1", "abc", [4, 5], FinishReason(FinishKind.STOP, matched=2),
                             Usage(7, 2, 4), 7, 0.25)
    assert answer == {"text": "abc", "output_ids": [4, 5], "meta_info": {
        "id": "r1", "finish_reason": {"type": "stop", "matched": 2}, "prompt_tokens": 7,
        "completion_tokens": 2, "cached_tokens": 4, "e2e_latency": 0.25}}
