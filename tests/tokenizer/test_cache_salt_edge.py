"""`cache_salt` at the front door: every door's body carries it to the TokenizedRequest, and a
bad one is refused by name before anything is tokenized or sent on."""

from __future__ import annotations

import pytest

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.native_protocol import parse_generate_request
from radixmesh.shared.front_door.openai_protocol import (
    parse_chat_request,
    parse_completion_request,
)
from radixmesh.shared.front_door.request_builder import RequestBuilder
from radixmesh.shared.front_door.servicer import request_body
from radixmesh.shared.protos_gen import generate_pb2
from radixmesh.shared.text_checks import MAX_CACHE_SALT_LENGTH

MODEL = "m"
BAD_SALTS = ("", "s" * (MAX_CACHE_SALT_LENGTH + 1), 7, "\ud800")


@pytest.fixture
def builder() -> RequestBuilder:
    return RequestBuilder(None, vocab_size=100, context_len=64)


def bodies(salt: object) -> list[dict]:
    """The same request as each HTTP door's parser hands it to RequestBuilder."""
    extra = {} if salt is None else {"cache_salt": salt}
    return [
        parse_completion_request({"model": MODEL, "prompt": [5, 6, 7], **extra}, MODEL).body,
        parse_generate_request({"input_ids": [5, 6, 7], **extra}).body,
        {"input_ids": [5, 6, 7], **extra},  # the offline engine's body
    ]


@pytest.mark.parametrize("salt", [None, "tenant-a", "ü" * MAX_CACHE_SALT_LENGTH])
def test_every_door_carries_the_salt(builder: RequestBuilder, salt: str | None) -> None:
    for body in bodies(salt):
        assert builder.build("r", body).cache_salt == salt
    message = generate_pb2.GenerateRequest(input_ids=generate_pb2.TokenIds(ids=[5, 6, 7]))
    if salt is not None:
        message.cache_salt = salt
    assert builder.build("r", request_body(message)).cache_salt == salt


@pytest.mark.parametrize("salt", BAD_SALTS)
def test_a_bad_salt_is_refused_by_name(builder: RequestBuilder, salt: object) -> None:
    for payload in ({"model": MODEL, "prompt": [5], "cache_salt": salt},
                    {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                     "cache_salt": salt}):
        parse = parse_completion_request if "prompt" in payload else parse_chat_request
        try:
            body = parse(payload, MODEL).body  # a wrong type is the declared model's to refuse
        except InvalidRequestError as error:
            assert error.field == "cache_salt" and not isinstance(salt, str)
            continue
        with pytest.raises(InvalidRequestError) as caught:
            builder.build("r", body)  # before the prompt: this builder has no tokenizer
        assert caught.value.field == "cache_salt"


def test_an_empty_salt_over_grpc_is_refused_and_an_unset_one_is_no_salt(
        builder: RequestBuilder) -> None:
    message = generate_pb2.GenerateRequest(input_ids=generate_pb2.TokenIds(ids=[5]),
                                           cache_salt="")
    with pytest.raises(InvalidRequestError, match="non-empty"):
        builder.build("r", request_body(message))
    message.ClearField("cache_salt")
    assert builder.build("r", request_body(message)).cache_salt is None
