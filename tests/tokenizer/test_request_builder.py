"""RequestBuilder: request bodies to TokenizedRequest, or an error naming the bad field."""

from __future__ import annotations

import pytest

from radixmesh.shared import wire
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.limits import fit_to_context
from radixmesh.shared.front_door.request_builder import (
    RequestBody,
    RequestBuilder,
    check_input_ids,
    check_messages,
)
from radixmesh.shared.front_door.servicer import request_body
from radixmesh.shared.protos_gen import generate_pb2
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.tokenizer import TextTokenizer

VOCAB = 512
CONTEXT = 64


@pytest.fixture
def builder(text_tokenizer: TextTokenizer) -> RequestBuilder:
    return RequestBuilder(text_tokenizer, vocab_size=VOCAB, context_len=CONTEXT)


def rejected_field(builder: RequestBuilder, body: object) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        builder.build("r1", body)  # type: ignore[arg-type]
    return caught.value


# Accepted requests.

def test_input_ids_and_sampling_fields(builder: RequestBuilder):
    request = builder.build("r1", {"input_ids": [1, 5, 9], "max_new_tokens": 8,
                                   "temperature": 0, "stop": "\n\n", "stop_token_ids": [4],
                                   "seed": 3, "ignore_eos": True})
    assert request.rid == "r1"
    assert request.input_ids == (1, 5, 9)
    assert request.sampling == SamplingParams(max_new_tokens=8, temperature=0, stop=("\n\n",),
                                              stop_token_ids=(4,), seed=3, ignore_eos=True)


def test_text_is_tokenized_with_the_models_defaults(builder: RequestBuilder,
                                                    text_tokenizer: TextTokenizer):
    request = builder.build("r1", {"text": "Hello, 世界", "max_new_tokens": 4})
    assert request.input_ids == tuple(text_tokenizer.encode("Hello, 世界"))


def test_messages_go_through_the_chat_template(builder: RequestBuilder,
                                               text_tokenizer: TextTokenizer):
    messages = [{"role": "user", "content": "Hi"}]
    request = builder.build("r1", {"messages": messages, "max_new_tokens": 4})
    assert request.input_ids == tuple(text_tokenizer.apply_chat_template(messages))
    assert text_tokenizer.decode(request.input_ids, skip_special_tokens=False).endswith(
        "<|im_start|>assistant\n")


def test_null_sampling_fields_mean_defaults(builder: RequestBuilder):
    request = builder.build("r1", {"input_ids": [1], "temperature": None, "seed": None})
    assert request.sampling.temperature == SamplingParams().temperature
    assert request.sampling.seed is None


def test_default_max_new_tokens_shrinks_to_the_room_left(builder: RequestBuilder):
    assert SamplingParams().max_new_tokens > CONTEXT
    request = builder.build("r1", {"input_ids": [1] * 60})
    assert request.sampling.max_new_tokens == CONTEXT - 60


def test_prompt_and_output_may_fill_the_context_exactly(builder: RequestBuilder):
    request = builder.build("r1", {"input_ids": [1] * 60, "max_new_tokens": 4})
    assert len(request.input_ids) + request.sampling.max_new_tokens == CONTEXT


def test_without_tokenizer_input_ids_still_work():
    builder = RequestBuilder(None, vocab_size=VOCAB, context_len=CONTEXT)
    assert builder.build("r1", {"input_ids": [3, 4]}).input_ids == (3, 4)


# Rejected requests: each names its field.

@pytest.mark.parametrize(("body", "field"), [
    ({"input_ids": [1], "stream": True}, "stream"),
    ({"input_ids": [1], "max_tokens": 3}, "max_tokens"),
    ({"max_new_tokens": 3}, "prompt"),
    ({"input_ids": [1], "text": "a"}, "prompt"),
    ({"text": "a", "messages": [{"role": "user", "content": "a"}]}, "prompt"),
    ({"input_ids": []}, "input_ids"),
    ({"input_ids": "1 2 3"}, "input_ids"),
    ({"input_ids": [1, 2.0]}, "input_ids"),
    ({"input_ids": [1, True]}, "input_ids"),
    ({"input_ids": [1, -1]}, "input_ids"),
    ({"input_ids": [1, VOCAB]}, "input_ids"),
    ({"text": ""}, "text"),
    ({"text": ["a"]}, "text"),
    ({"messages": []}, "messages"),
    ({"messages": {"role": "user", "content": "a"}}, "messages"),
    ({"messages": ["hi"]}, "messages[0]"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": 1, "content": "b"}]},
     "messages[1].role"),
    ({"messages": [{"role": "", "content": "a"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]},
     "messages[0].content[0].text"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
    ({"messages": [{"role": "hacker", "content": "a"}]}, "messages[0].role"),
    ({"messages": [{"role": "tool", "content": "a"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "a", "tool_calls": []}]},
     "messages[0].tool_calls"),
    ({"input_ids": [1], "max_new_tokens": 0}, "max_new_tokens"),
    ({"input_ids": [1], "max_new_tokens": "8"}, "max_new_tokens"),
    ({"input_ids": [1], "temperature": -1}, "temperature"),
    ({"input_ids": [1], "top_p": 0}, "top_p"),
    ({"input_ids": [1], "stop": [""]}, "stop"),
    ({"input_ids": [1], "stop_token_ids": [VOCAB]}, "stop_token_ids"),
])
def test_rejections_name_the_field(builder: RequestBuilder, body: dict, field: str):
    assert rejected_field(builder, body).field == field


def test_body_must_be_an_object(builder: RequestBuilder):
    assert rejected_field(builder, [1, 2]).field == "body"


def test_out_of_vocabulary_id_is_named(builder: RequestBuilder):
    error = rejected_field(builder, {"input_ids": [1, 2, 777, 3]})
    assert "777" in error.message and "position 2" in error.message


def test_too_long_for_the_context_names_max_new_tokens_and_the_numbers(builder: RequestBuilder):
    error = rejected_field(builder, {"input_ids": [1] * 60, "max_new_tokens": 5})
    assert error.field == "max_new_tokens"
    assert all(str(n) in error.message for n in (60, 5, 65, CONTEXT))


def test_prompt_filling_the_context_is_blamed_on_the_prompt(builder: RequestBuilder):
    error = rejected_field(builder, {"input_ids": [1] * CONTEXT})
    assert error.field == "input_ids"
    assert "too long" in error.message


def test_long_text_is_checked_after_tokenization(builder: RequestBuilder):
    assert rejected_field(builder, {"text": "word " * 100}).field == "text"


@pytest.mark.parametrize("body", [{"text": "hi"}, {"messages": [{"role": "user",
                                                                  "content": "hi"}]}])
def test_without_tokenizer_text_prompts_are_refused_clearly(body: dict):
    builder = RequestBuilder(None, vocab_size=VOCAB, context_len=CONTEXT)
    error = rejected_field(builder, body)
    assert error.field in body and "input_ids" in error.message


def test_tokenizer_ids_beyond_the_model_vocabulary_name_the_prompt_field(
        text_tokenizer: TextTokenizer):
    small = RequestBuilder(text_tokenizer, vocab_size=300, context_len=CONTEXT)
    assert rejected_field(small, {"text": "The scheduler keeps a queue"}).field == "text"


# The pure checks, alone.

def test_check_input_ids_returns_a_tuple_and_names_the_field():
    assert check_input_ids([0, 1, 2], 3) == (0, 1, 2)
    with pytest.raises(InvalidRequestError) as caught:
        check_input_ids([3], 3, field="text")
    assert caught.value.field == "text"


def test_check_messages_keeps_extra_keys():
    messages = [{"role": "user", "content": "hi", "name": "ann"}]
    assert check_messages(messages) == messages


def test_fit_to_context_keeps_a_fitting_explicit_value():
    params = SamplingParams(max_new_tokens=10)
    assert fit_to_context(params, 5, 15, max_new_tokens_given=True) is params


# The public gRPC door: its message decodes straight into a RequestBody, validated as JSON is.

def grpc_body(**sampling: object) -> RequestBody:
    message = generate_pb2.GenerateRequest(sampling=wire.sampling_fields_to_proto(sampling))
    message.input_ids.ids.extend([1, 5, 9])
    return request_body(message)


def test_a_grpc_request_builds_what_its_json_twin_builds(builder: RequestBuilder):
    fields = {"max_new_tokens": 8, "temperature": 0, "stop": ["\n\n"], "seed": 3}
    assert builder.build("r1", grpc_body(**fields)) == \
        builder.build("r1", {"input_ids": [1, 5, 9], **fields})
    unset = builder.build("r1", grpc_body())  # the default max_new_tokens shrinks to fit
    assert unset == builder.build("r1", {"input_ids": [1, 5, 9]})


@pytest.mark.parametrize(("sampling", "field"), [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_p": 2.0}, "top_p"),
    ({"temperature": float("nan")}, "temperature"), ({"seed": 2**63}, "seed"),
    ({"stop_token_ids": [VOCAB]}, "stop_token_ids")])
def test_grpc_sampling_is_validated_by_the_same_validator(builder: RequestBuilder,
                                                          sampling: dict, field: str):
    assert rejected_field(builder, grpc_body(**sampling)).field == field


def test_a_grpc_request_without_a_prompt_names_the_prompt():
    with pytest.raises(InvalidRequestError) as caught:
        request_body(generate_pb2.GenerateRequest())
    assert caught.value.field == "prompt"
