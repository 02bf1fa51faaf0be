"""OpenAI request bodies -> our request bodies: pure functions, no I/O.

`/v1/completions` and `/v1/chat/completions` bodies become the dicts `RequestBuilder` takes
(one prompt field plus the `SamplingParams` fields), along with the few things only the HTTP
layer needs (stream, usage in the stream, which name the client used for the token limit).
Every rejection is an InvalidRequestError whose `field` is the OpenAI parameter's name.
SGLang's sampling extras are accepted in the body as SGLang accepts them. The list limits
(stop strings and stop token ids: the front door's flags) are checked here, before anything
walks the lists; the text's encoding was checked as the body was decoded (`http_limits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.sampling_params import DEFAULT_LIMITS, SamplingLimits, check_stop_lists
from radixmesh.shared.text_checks import check_rid

# OpenAI name -> our SamplingParams name, for fields both endpoints take.
SAMPLING_FIELDS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                   "stop": "stop", "frequency_penalty": "frequency_penalty",
                   "presence_penalty": "presence_penalty"}
SGLANG_EXTRAS = ("ignore_eos", "top_k", "min_p", "repetition_penalty", "stop_token_ids")
# Accepted and ignored: they change nothing about what is generated.
IGNORED_FIELDS = frozenset({"user", "metadata", "store", "service_tier",
                            "parallel_tool_calls"})
# Accepted only at their neutral value; anything else asks for a feature we lack.
UNSUPPORTED_UNLESS_NEUTRAL = {
    "n": (None, 1), "best_of": (None, 1), "logprobs": (None, False, 0),
    "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
    "logit_bias": (None, {}), "tools": (None, []), "tool_choice": (None, "none"),
    "functions": (None, []), "function_call": (None, "none"),
}
COMMON_FIELDS = (frozenset({"model", "stream", "stream_options", "rid", "max_tokens",
                            "max_new_tokens"})
                 | frozenset(SAMPLING_FIELDS) | frozenset(SGLANG_EXTRAS) | IGNORED_FIELDS
                 | frozenset(UNSUPPORTED_UNLESS_NEUTRAL))
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "response_format"}
# Token-limit names in order of precedence, per endpoint.
COMPLETION_LIMIT_NAMES = ("max_tokens", "max_new_tokens")
CHAT_LIMIT_NAMES = ("max_completion_tokens", "max_tokens", "max_new_tokens")


class UnknownModelError(InvalidRequestError):
    """A model this server does not serve: 404 / NOT_FOUND, as OpenAI answers (its client
    raises NotFoundError), rather than the 400 of a malformed request."""

    grpc_status = grpc.StatusCode.NOT_FOUND
    http_status = 404

    def __init__(self, model: object, served_model: str) -> None:
        super().__init__("model", f"the model {_short(model)} does not exist here; "
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
    body = _check_common(payload, COMPLETION_FIELDS, served_model, limits)
    prompt_field, prompt = _completion_prompt(body.get("prompt"))
    return _translate(body, {prompt_field: prompt}, COMPLETION_LIMIT_NAMES)


def parse_chat_request(payload: object, served_model: str,
                       limits: SamplingLimits = DEFAULT_LIMITS) -> OpenAIRequest:
    body = _check_common(payload, CHAT_FIELDS, served_model, limits)
    _check_response_format(body.get("response_format"))
    return _translate(body, {"messages": chat_messages(body.get("messages"))}, CHAT_LIMIT_NAMES)


def _check_common(payload: object, known: frozenset[str], served_model: str,
                  limits: SamplingLimits) -> Mapping:
    if not isinstance(payload, Mapping):
        raise InvalidRequestError("body", "must be a JSON object")
    unknown = sorted(str(key) for key in payload if key not in known)
    if unknown:
        raise InvalidRequestError(unknown[0], "unknown or unsupported parameter")
    model = payload.get("model")
    if model is not None and model != served_model:
        raise UnknownModelError(model, served_model)
    for name, neutral in UNSUPPORTED_UNLESS_NEUTRAL.items():
        if payload.get(name) not in neutral:
            raise InvalidRequestError(name, f"{name}={_short(payload[name])} is not supported")
    check_stop_lists(_as_list(payload.get("stop")), _as_list(payload.get("stop_token_ids")),
                     limits)
    return payload


def _short(value: object, limit: int = 80) -> str:
    """`value`'s repr, cut: an error message must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _as_list(value: object) -> list | tuple:
    """A stop field as the list it stands for; other types are left to SamplingParams,
    which names them."""
    if isinstance(value, str):
        return (value,)
    return value if isinstance(value, list) else ()


def _translate(body: Mapping, prompt: dict, limit_names: tuple[str, ...]) -> OpenAIRequest:
    ours = dict(prompt)
    for openai_name, our_name in SAMPLING_FIELDS.items():
        if body.get(openai_name) is not None:
            ours[our_name] = body[openai_name]
    for name in SGLANG_EXTRAS:
        if body.get(name) is not None:
            ours[name] = body[name]
    limit_name = next((name for name in limit_names if body.get(name) is not None),
                      limit_names[0])
    if body.get(limit_name) is not None:
        ours["max_new_tokens"] = body[limit_name]
    stream = _check_bool("stream", body.get("stream", False))
    include_usage = _include_usage(body.get("stream_options"), stream)
    rid = body.get("rid")
    if rid is not None:
        check_rid(rid)
    return OpenAIRequest(ours, rid, stream, include_usage, limit_name)


def _completion_prompt(prompt: object) -> tuple[str, object]:
    """A string, a list of token ids, or a batch of exactly one of those."""
    if prompt is None:
        raise InvalidRequestError("prompt", "is required")
    if isinstance(prompt, str):
        return "text", prompt
    if not isinstance(prompt, list):
        raise InvalidRequestError("prompt", "must be a string or a list of token ids")
    if not prompt:
        raise InvalidRequestError("prompt", "must not be empty")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
        return "input_ids", prompt
    if len(prompt) > 1:
        raise InvalidRequestError("prompt", "batches of prompts are not supported; "
                                  "send one prompt per request")
    return _completion_prompt(prompt[0])


def chat_messages(messages: object) -> list[dict]:
    """OpenAI messages with text content flattened to strings; RequestBuilder checks the rest.

    Content given as parts must be text parts, joined by newlines; `None` content (an
    assistant turn with tool calls) becomes "".
    """
    if not isinstance(messages, list):
        raise InvalidRequestError("messages", "must be a list of {role, content} objects")
    flattened = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"messages[{index}]", "must be an object")
        message = dict(message)
        message["content"] = _flatten_content(message.get("content"), index)
        flattened.append(message)
    return flattened


def _flatten_content(content: object, index: int) -> object:
    if content is None:
        return ""
    if not isinstance(content, list):
        return content  # strings pass; RequestBuilder names any other type
    texts = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") != "text" \
                or not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"messages[{index}].content",
                                      "only text content parts are supported")
        texts.append(part["text"])
    return "\n".join(texts)


def _check_response_format(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping) or value.get("type") != "text":
        raise InvalidRequestError("response_format", "only {\"type\": \"text\"} is supported")


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(name, f"must be a boolean, got {value!r}")
    return value


def _include_usage(options: object, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise InvalidRequestError("stream_options", "is only allowed with stream=true")
    if not isinstance(options, Mapping):
        raise InvalidRequestError("stream_options", "must be an object")
    unknown = sorted(set(options) - {"include_usage", "continuous_usage_stats"})
    if unknown:
        raise InvalidRequestError(f"stream_options.{unknown[0]}", "unknown option")
    return _check_bool("stream_options.include_usage", options.get("include_usage", False))
