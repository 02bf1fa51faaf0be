"""OpenAI bodies <-> our bodies: the pure translation functions of the HTTP front door."""

from __future__ import annotations

import json

import pytest

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door import openai_responses as responses
from radixmesh.shared.front_door.openai_protocol import (
    chat_messages,
    parse_chat_request,
    parse_completion_request,
)
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, Usage

MODEL = "tiny-llama"


def test_completion_maps_openai_and_sglang_fields_to_our_body() -> None:
    parsed = parse_completion_request({
        "model": MODEL, "prompt": "Hello", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9,
        "stop": ["\n"], "seed": 3, "frequency_penalty": 0.1, "presence_penalty": 0.2,
        "ignore_eos": True, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1,
        "stop_token_ids": [2], "user": "someone", "n": 1, "logprobs": None}, MODEL)
    assert parsed.body == {
        "text": "Hello", "max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9,
        "stop": ["\n"], "seed": 3, "frequency_penalty": 0.1, "presence_penalty": 0.2,
        "ignore_eos": True, "top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1,
        "stop_token_ids": [2]}
    assert not parsed.stream and not parsed.include_usage and parsed.rid is None


@pytest.mark.parametrize(("prompt", "expected"), [
    ("text", {"text": "text"}),
    ([1, 2, 3], {"input_ids": [1, 2, 3]}),
    (["only one"], {"text": "only one"}),
    ([[4, 5]], {"input_ids": [4, 5]}),
])
def test_completion_prompt_forms(prompt: object, expected: dict) -> None:
    assert parse_completion_request({"prompt": prompt}, MODEL).body == expected


@pytest.mark.parametrize(("body", "param"), [
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "model": "gpt-4"}, "model"),
    ({"prompt": "x", "n": 2}, "n"),
    ({"prompt": "x", "logprobs": 3}, "logprobs"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "best_of": 2}, "best_of"),
    ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "x", "rid": ""}, "rid"),
])
def test_completion_rejections_name_the_openai_parameter(body: dict, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_completion_request(body, MODEL)
    assert caught.value.field == param


def test_a_non_object_body_is_rejected() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_completion_request([1, 2], MODEL)
    assert caught.value.field == "body"


def test_unknown_model_message_names_both_models() -> None:
    with pytest.raises(InvalidRequestError, match="'gpt-4'.*'tiny-llama'"):
        parse_chat_request({"model": "gpt-4", "messages": []}, MODEL)


def test_chat_limit_names_in_order_of_precedence() -> None:
    messages = [{"role": "user", "content": "hi"}]
    both = parse_chat_request({"messages": messages, "max_completion_tokens": 3,
                               "max_tokens": 9}, MODEL)
    assert both.body["max_new_tokens"] == 3 and both.limit_name == "max_completion_tokens"
    legacy = parse_chat_request({"messages": messages, "max_tokens": 9}, MODEL)
    assert legacy.body["max_new_tokens"] == 9 and legacy.param_name("max_new_tokens") == "max_tokens"
    neither = parse_chat_request({"messages": messages}, MODEL)
    assert "max_new_tokens" not in neither.body


def test_builder_fields_map_back_to_openai_names() -> None:
    completion = parse_completion_request({"prompt": "x", "max_tokens": 0}, MODEL)
    assert completion.param_name("text") == "prompt"
    assert completion.param_name("input_ids") == "prompt"
    assert completion.param_name("max_new_tokens") == "max_tokens"
    assert completion.param_name("temperature") == "temperature"
    chat = parse_chat_request({"messages": [{"role": "user", "content": "x"}]}, MODEL)
    assert chat.param_name("prompt") == "messages"


def test_stream_options_and_rid() -> None:
    parsed = parse_chat_request({"messages": [{"role": "user", "content": "x"}], "stream": True,
                                 "stream_options": {"include_usage": True}, "rid": "r1"}, MODEL)
    assert parsed.stream and parsed.include_usage and parsed.rid == "r1"


def test_chat_content_parts_are_flattened_and_other_keys_kept() -> None:
    messages = chat_messages([
        {"role": "system", "content": [{"type": "text", "text": "a"},
                                       {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "", "name": "bot"},
    ])
    assert messages == [{"role": "system", "content": "a\nb"},
                        {"role": "assistant", "content": "", "name": "bot"}]


@pytest.mark.parametrize(("messages", "param"), [
    ("hello", "messages"),
    (["hello"], "messages[0]"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
     "messages[0].content"),
])
def test_bad_chat_messages(messages: object, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request({"messages": messages}, MODEL)
    assert caught.value.field == param


def test_response_format_other_than_text_is_rejected() -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    parse_chat_request({**body, "response_format": {"type": "text"}}, MODEL)
    with pytest.raises(InvalidRequestError) as caught:
        parse_chat_request({**body, "response_format": {"type": "json_object"}}, MODEL)
    assert caught.value.field == "response_format"


# ---- responses --------------------------------------------------------------------------------

USAGE = Usage(prompt_tokens=4, completion_tokens=2, cached_tokens=1)
STOP = FinishReason(FinishKind.STOP, matched="\n")


def test_non_streaming_bodies_carry_text_finish_and_usage() -> None:
    completion = responses.completion_response("cmpl-1", 10, MODEL, "hi", STOP, USAGE)
    assert completion["object"] == "text_completion"
    assert completion["choices"] == [{"index": 0, "text": "hi", "logprobs": None,
                                      "finish_reason": "stop", "matched_stop": "\n"}]
    assert completion["usage"] == {"prompt_tokens": 4, "completion_tokens": 2,
                                   "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 1}}
    chat = responses.chat_response("chatcmpl-1", 10, MODEL, "hi", STOP, USAGE)
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "hi"}
    assert chat["usage"]["total_tokens"] == 6


def test_chat_stream_shape() -> None:
    fmt = responses.ChatFormat()
    ids = ("chatcmpl-1", 10, MODEL)
    opening = fmt.opening(*ids)
    assert opening[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert fmt.chunks(*ids, TextDelta("r", "", [5])) == []  # text held back: nothing to send
    middle = fmt.chunks(*ids, TextDelta("r", "ab", [5]))
    assert [c["choices"][0]["delta"] for c in middle] == [{"content": "ab"}]
    last = fmt.chunks(*ids, TextDelta("r", "c", [6], STOP, USAGE))
    assert [c["choices"][0]["delta"] for c in last] == [{"content": "c"}, {}]
    assert last[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["object"] == "chat.completion.chunk" for c in opening + middle + last)


def test_completion_stream_puts_finish_on_the_last_text_chunk() -> None:
    fmt = responses.CompletionFormat()
    last = fmt.chunks("cmpl-1", 10, MODEL, TextDelta("r", "z", [6],
                                                     FinishReason(FinishKind.LENGTH), USAGE))
    assert len(last) == 1 and last[0]["choices"][0]["text"] == "z"
    assert last[0]["choices"][0]["finish_reason"] == "length"


def test_usage_chunk_and_sse_framing() -> None:
    chunk = responses.usage_chunk("chat.completion.chunk", "chatcmpl-1", 10, MODEL, USAGE)
    assert chunk["choices"] == [] and chunk["usage"]["completion_tokens"] == 2
    event = responses.sse_event({"a": "é"})
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert json.loads(event[len(b"data: "):]) == {"a": "é"}
    assert responses.SSE_DONE == b"data: [DONE]\n\n"


def test_error_body_shape() -> None:
    assert responses.error_body("max_tokens: must be >= 1", "max_tokens") == {
        "error": {"message": "max_tokens: must be >= 1", "type": "invalid_request_error",
                  "param": "max_tokens", "code": 400}}
