"""OpenAI request bodies -> our request bodies: pure functions, no I/O.

`/v1/completions` and `/v1/chat/completions` bodies are validated against their declared
models (`openai_models.py`: types, unknown fields, options accepted only at their defaults,
roles and content) and become the dicts `RequestBuilder` takes (one prompt field plus the
`SamplingParams` fields), along with the few things only the HTTP layer needs (stream, usage
in the stream, which name the client used for the token limit). Every rejection is an
InvalidRequestError whose `field` is the OpenAI parameter's path; ranges are left to
`SamplingParams.validate`, which `RequestBuilder` runs, and blamed back on the OpenAI name
(`OpenAIRequest.param_name`). The list limits (stop strings and stop token ids: the front
door's flags) are checked here; the text's encoding was checked as the body was decoded
(`http_limits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.openai_models import (
    ChatCompletionRequest,
    CompletionRequest,
    chat_messages,
)
from radixmesh.shared.front_door.validation_errors import short_repr, validate_body
from radixmesh.shared.sampling_params import DEFAULT_LIMITS, SamplingLimits, check_stop_lists
from radixmesh.shared.text_checks import check_rid

# OpenAI name -> our SamplingParams name, for fields both endpoints take.
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                   "stop": "stop", "frequency_penalty": "frequency_penalty",
                   "presence_penalty": "presence_penalty"}
SGLANG_EXTRAS = ("ignore_eos", "top_k", "min_p", "repetition_penalty", "stop_token_ids")
# Token-limit names in order of precedence, per endpoint.
COMPLETION_LIMIT_NAMES = ("max_tokens", "max_new_tokens")
CHAT_LIMIT_NAMES = ("max_completion_tokens", "max_tokens", "max_new_tokens")
__all__ = ["OpenAIRequest", "UnknownModelError", "chat_messages", "parse_chat_request",
           "parse_completion_request"]


class UnknownModelError(InvalidRequestError):
    """A model this server does not serve: 404 / NOT_FOUND, as OpenAI answers (its client
    raises NotFoundError), rather than the 400 of a malformed request."""

    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404

    def __init__(self, model: object, served_model: str) -> None:
        super().__init__("model", f"the model {short_repr(model)} does not exist here; "
                         f"available: {served_model!r}")


@dataclass(frozen=True, slots=True)
class OpenAIRequest:
    """One OpenAI request, translated."""

    body: dict                 # RequestBuilder's body: a prompt field + sampling fields
    rid: str | None            # SGLang's `rid` extra: the client's request id, if any
    stream: bool
    include_usage: bool        # stream_options.include_usage
    limit_name: str            # the OpenAI name the client used for the token limit

    def param_name(self, field: str) -> str:
        """The OpenAI parameter to blame for an error RequestBuilder raised about `field`."""
        if field in ("text", "input_ids", "prompt"):
            return "prompt" if "messages" not in self.body else "messages"
        if field == "max_new_tokens":
            return self.limit_name
        return field


def parse_completion_request(payload: object, served_model: str,
                             limits: SamplingLimits = DEFAULT_LIMITS) -> OpenAIRequest:
    check_model(payload, served_model)
    request = validate_body(CompletionRequest, payload)
    prompt_field, prompt = request.prompt
    return _translate(request, {prompt_field: prompt}, COMPLETION_LIMIT_NAMES, limits)


def parse_chat_request(payload: object, served_model: str,
                       limits: SamplingLimits = DEFAULT_LIMITS) -> OpenAIRequest:
    check_model(payload, served_model)
    request = validate_body(ChatCompletionRequest, payload)
    messages = [message.for_template() for message in request.messages]
    return _translate(request, {"messages": messages}, CHAT_LIMIT_NAMES, limits)


def check_model(payload: object, served_model: str) -> None:
    """A request for another model is a 404 whatever else its body says, as OpenAI answers;
    a `model` that is not a string is the model's validation error."""
    model = payload.get("model") if isinstance(payload, Mapping) else None
    if isinstance(model, str) and model != served_model:
        raise UnknownModelError(model, served_model)


def _translate(request: CompletionRequest | ChatCompletionRequest, prompt: dict,
               limit_names: tuple[str, ...], limits: SamplingLimits) -> OpenAIRequest:
    check_stop_lists(request.stop or (), request.stop_token_ids or (), limits)
    ours = dict(prompt)
    for openai_name, our_name in SAMPLING_FIELDS.items():
        if getattr(request, openai_name) is not None:
            ours[our_name] = getattr(request, openai_name)
    for name in SGLANG_EXTRAS:
        if getattr(request, name) is not None:
            ours[name] = getattr(request, name)
    limit_name = next((name for name in limit_names if getattr(request, name) is not None),
                      limit_names[0])
    if getattr(request, limit_name) is not None:
        ours["max_new_tokens"] = getattr(request, limit_name)
    if request.cache_salt is not None:
        ours["cache_salt"] = request.cache_salt  # RequestBuilder checks it
    stream = bool(request.stream)
    options = request.stream_options
    if options is not None and not stream:
        raise InvalidRequestError("stream_options", "is only allowed with stream=true")
    if request.rid is not None:
        check_rid(request.rid)
    include_usage = options is not None and options.include_usage
    return OpenAIRequest(ours, request.rid, stream, include_usage, limit_name)
