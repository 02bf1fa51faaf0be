"""The declared request models and what the front door makes of their errors, of malformed
protobuf and of aborted requests: pure functions, no servers."""

from __future__ import annotations

import dataclasses

import grpc
import pytest

from radixmesh.shared import wire
from radixmesh.shared.errors import CapacityError, InvalidRequestError, grpc_code, http_status
from radixmesh.shared.front_door.admission import check_admission
from radixmesh.shared.front_door.finish_status import (
    CLIENT_CLOSED_REQUEST,
    RequestAbortedError,
    finish_error,
    refusal,
)
from radixmesh.shared.front_door.grpc_decoding import (
    Malformed,
    bad_field,
    decoder,
    unknown_field,
)
from radixmesh.shared.front_door.native_models import NativeSampling
from radixmesh.shared.front_door.native_protocol import OUR_SAMPLING, parse_generate_request
from radixmesh.shared.front_door.openai_protocol import (
    chat_messages,
    parse_chat_request,
    parse_completion_request,
)
from radixmesh.shared.front_door.validation_errors import field_path
from radixmesh.shared.protos_gen import generate_pb2
from radixmesh.shared.requests import FinishKind, FinishReason

MODEL = "tiny-llama"
USER = [{"role": "user", "content": "hi"}]


def refused(parse, body: object) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        parse(body)
    return caught.value


def test_field_paths_read_as_openai_writes_them() -> None:
    assert field_path(("messages", 2, "content", 0, "text")) == "messages[2].content[0].text"
    assert field_path(("sampling_params", "top_k")) == "sampling_params.top_k"
    assert field_path(()) == "body"


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"prompt": "x", "stream": "yes"}, "stream", "must be a boolean, got 'yes'"),
    ({"prompt": "x", "max_tokens": 2.5}, "max_tokens", "must be an integer"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens", "must be an integer"),
    ({"prompt": "x", "temperature": "hot"}, "temperature", "must be a number"),
    ({"prompt": "x", "temperature": float("nan")}, "temperature", "finite"),
    ({"prompt": "x", "n": True}, "n", "is not supported except at its default (1)"),
    ({"prompt": "x", "n": 1.0}, "n", "is not supported"),
    ({"prompt": "x", "logprobs": 0}, "logprobs", "is not supported"),
    ({"prompt": "x", "stop": ["a", 1]}, "stop[1]", "must be a string"),
    ({"prompt": "x", "stop": 5}, "stop", "a string or a list of strings"),
    ({"prompt": None}, "prompt", "a string or a list of token ids"),
    ({"prompt": [[1, "a"]]}, "prompt", "token ids"),
    ({"prompt": "x", "stream_options": {"include_usage": True, "x": 1}},
     "stream_options.x", "unknown"),
    ({"max_token": 5}, "max_token", "unknown or unsupported parameter"),
])
def test_completion_errors_name_the_field_in_our_words(body: dict, field: str,
                                                       words: str) -> None:
    error = refused(lambda b: parse_completion_request(b, MODEL), body)
    assert error.field == field and words in error.message


@pytest.mark.parametrize(("messages", "field", "words"), [
    ([{"role": "hacker", "content": "x"}], "messages[0].role", "must be one of system"),
    ([{"role": "tool", "content": "x"}], "messages[0].role", "tool calling"),
    ([{"role": "user"}], "messages[0].content", "is required"),
    ([{"content": "x"}], "messages[0].role", "is required"),
    ([{"role": "assistant", "content": None}], "messages[0].content", "text parts"),
    ([{"role": "user", "content": 5}], "messages[0].content", "text parts"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}],
     "messages[0].content", "only text content parts"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}],
     "messages[0].content[0].text", "must be a string"),
    ([{"role": "user", "content": "x", "tool_call_id": "t"}], "messages[0].tool_call_id",
     "unknown"),
    ([], "messages", "must not be empty"),
])
def test_roles_and_content_are_validated(messages: list, field: str, words: str) -> None:
    error = refused(lambda b: parse_chat_request(b, MODEL), {"messages": messages})
    assert error.field == field and words in error.message


def test_chat_defaults_are_accepted_and_developer_is_the_system_turn() -> None:
    parsed = parse_chat_request({
        "messages": [{"role": "developer", "content": "be brief"}, *USER], "n": 1,
        "logprobs": False, "tools": [], "tool_choice": "none", "store": False, "user": "u",
        "response_format": {"type": "text"}, "parallel_tool_calls": True, "seed": None,
        "metadata": {"k": "v"}, "service_tier": "auto", "modalities": ["text"]}, MODEL)
    assert parsed.body == {"messages": [{"role": "system", "content": "be brief"}, *USER]}
    for name, value in (("store", True), ("tools", [{"type": "function"}]),
                        ("modalities", ["audio"]), ("service_tier", "flex")):
        error = refused(lambda b: parse_chat_request(b, MODEL), {"messages": USER, name: value})
        assert error.field == name


def test_chat_messages_serve_every_door() -> None:
    assert chat_messages([{"role": "user", "content": [{"type": "text", "text": "a"},
                                                       {"type": "text", "text": "b"}]}]) == \
        [{"role": "user", "content": "a\nb"}]


def test_native_sampling_declares_every_sampling_parameter() -> None:
    """A new SamplingParams field must be declared for /generate, or it would be refused."""
    assert OUR_SAMPLING <= set(NativeSampling.model_fields)


@pytest.mark.parametrize(("body", "field"), [
    ({"text": "hi", "sampling_params": {"seed": 1, "sampling_seed": 2}},
     "sampling_params.sampling_seed"),
    ({"text": "hi", "sampling_params": {"n": 2}}, "sampling_params.n"),
    ({"text": "hi", "sampling_params": {"temperature": "0"}}, "sampling_params.temperature"),
    ({"text": ["a", "b"]}, "text"),
    ({"text": "hi", "input_ids": [1]}, "text"),
    ({"input_ids": [1, True]}, "input_ids[1]"),
    ({"text": "hi", "stream": 1}, "stream"),
    ({"text": "hi", "return_logprob": True}, "return_logprob"),
])
def test_native_errors_name_the_field(body: dict, field: str) -> None:
    assert refused(parse_generate_request, body).field == field


# ---- malformed protobuf ---------------------------------------------------------------------

GENERATE = generate_pb2.GenerateRequest.DESCRIPTOR


def field_bytes(number: int, payload: bytes) -> bytes:
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize(("raw", "field"), [
    (field_bytes(1, b"\xff\xfe"), "rid"),
    (field_bytes(2, b"ok") + field_bytes(5, field_bytes(7, b"\xc3")), "sampling.stop[0]"),
    (field_bytes(4, field_bytes(1, field_bytes(1, b"user")) + field_bytes(
        1, field_bytes(2, b"\xff"))), "messages.messages[1].content"),
    (b"\x0a\x05ab", "request"),  # a length past the end
    (b"\xff\xff\xff", "request"),
])
def test_undecodable_bytes_become_a_malformed_request_naming_the_field(raw: bytes,
                                                                       field: str) -> None:
    decoded = decoder(GENERATE)(raw)
    assert isinstance(decoded, Malformed) and decoded.error.field == field
    assert "malformed protobuf" in decoded.error.message


def test_unknown_fields_and_wrong_wire_types_are_named() -> None:
    decode = decoder(GENERATE)
    assert decode(field_bytes(2, b"hi")).text == "hi"
    for raw, field in ((field_bytes(2, b"hi") + b"\x78\x05", "<field 15>"),
                       (b"\x08\x05", "rid"),  # a string field sent as a varint
                       (field_bytes(5, b"\x78\x01"), "sampling.<field 15>")):
        decoded = decode(raw)
        assert isinstance(decoded, Malformed) and decoded.error.field == field
    assert unknown_field(generate_pb2.GenerateRequest(text="x")) is None
    assert bad_field(GENERATE, field_bytes(2, b"fine")) is None


# ---- aborted and refused requests -----------------------------------------------------------


def test_an_abort_without_a_status_is_a_cancelled_request() -> None:
    error = finish_error(FinishReason(FinishKind.ABORT, message="aborted by the client"))
    assert isinstance(error, RequestAbortedError)
    assert http_status(error) == CLIENT_CLOSED_REQUEST
    assert grpc_code(error) is grpc.StatusCode.CANCELLED
    assert refusal(FinishReason(FinishKind.ABORT)) is None  # a stream ends with its finish
    assert finish_error(FinishReason(FinishKind.LENGTH)) is None
    assert finish_error(None) is None


def test_a_refusal_carries_its_status_and_field() -> None:
    bad = FinishReason(FinishKind.ABORT, message="max_new_tokens: exceeds the KV pool",
                       status_code=400)
    error = refusal(bad)
    assert isinstance(error, InvalidRequestError)
    assert (error.field, error.message) == ("max_new_tokens", "exceeds the KV pool")
    failed = finish_error(FinishReason(FinishKind.ABORT, message="boom", status_code=500))
    assert http_status(failed) == 500 and grpc_code(failed) is grpc.StatusCode.INTERNAL
    odd = finish_error(FinishReason(FinishKind.ABORT, message="odd", status_code=42))
    assert http_status(odd) == 500


def test_the_status_code_crosses_the_wire_and_shows_in_the_finish_dict() -> None:
    finish = FinishReason(FinishKind.ABORT, message="input_ids: bad", status_code=400)
    assert wire.finish_from_proto(wire.finish_to_proto(finish)) == finish
    plain = dataclasses.replace(finish, status_code=None)
    assert wire.finish_from_proto(wire.finish_to_proto(plain)) == plain
    assert finish.to_dict()["status_code"] == 400 and "status_code" not in plain.to_dict()


def test_admission_sheds_past_the_limit_only() -> None:
    check_admission(10**6, None)
    check_admission(1, 2)
    with pytest.raises(CapacityError, match="--max-queued-requests 2"):
        check_admission(2, 2)
