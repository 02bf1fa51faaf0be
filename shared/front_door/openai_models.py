"""The OpenAI request bodies we take, declared: `/v1/completions` and `/v1/chat/completions`.

Every field OpenAI documents for these endpoints is declared, with SGLang's sampling extras;
a field we do not implement is accepted at its default only (design §5: `n: 1`, `user`,
`stream_options`, `logprobs: false`, ...), and an undeclared one is refused by name. Roles are
OpenAI's system, developer, user and assistant (tool turns need tool calling, which is not
supported), and content is a string or a list of text parts.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from radixmesh.shared.front_door.declared_fields import (
    STRICT,
    Float,
    Int,
    StopStrings,
    TokenIds,
    invalid,
    neutral,
)
from radixmesh.shared.front_door.validation_errors import short_repr, validate_body

ROLES = ("system", "developer", "user", "assistant")
TOOL_ROLES = ("tool", "function")


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False
    continuous_usage_stats: Annotated[Any, neutral(False)] = None  # vLLM's: usage on every chunk


class _Common(BaseModel):
    """Fields both endpoints take."""

    model_config = STRICT

    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Int | None = None
    temperature: Float | None = None
    top_p: Float | None = None
    seed: Int | None = None
    stop: StopStrings | None = None
    frequency_penalty: Float | None = None
    presence_penalty: Float | None = None
    user: str | None = None  # an end-user id for abuse monitoring: changes no output
    # SGLang's extras, as SGLang takes them in OpenAI bodies.
    rid: str | None = None
    max_new_tokens: Int | None = None
    ignore_eos: bool | None = None
    top_k: Int | None = None
    min_p: Float | None = None
    repetition_penalty: Float | None = None
    stop_token_ids: TokenIds | None = None
    # vLLM's: requests share cached prefixes only with requests of the same salt.
    cache_salt: str | None = None
    # Not implemented: their defaults only.
    n: Annotated[Any, neutral(1)] = None
    logit_bias: Annotated[Any, neutral({})] = None


def _completion_prompt(value: object) -> tuple[str, object]:
    """("text", str) or ("input_ids", [int]): a string, a list of token ids, or a batch of
    exactly one of those."""
    if isinstance(value, str):
        return "text", value
    if not isinstance(value, list):
        raise invalid(f"must be a string or a list of token ids, got {short_repr(value)}")
    if not value:
        raise invalid("must not be empty")
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return "input_ids", value
    if len(value) > 1:
        raise invalid("batches of prompts are not supported; send one prompt per request")
    inner = value[0]
    if isinstance(inner, list) and not all(
            isinstance(item, int) and not isinstance(item, bool) for item in inner):
        raise invalid("must be a string or a list of token ids (integers)")
    return _completion_prompt(inner)


class CompletionRequest(_Common):
    prompt: Annotated[Any, AfterValidator(_completion_prompt)]
    logprobs: Annotated[Any, neutral()] = None  # 0 still asks for the chosen tokens' logprobs
    best_of: Annotated[Any, neutral(1)] = None
    echo: Annotated[Any, neutral(False)] = None
    suffix: Annotated[Any, neutral("")] = None


# ---- chat -----------------------------------------------------------------------------------


def _text_only(kind: str) -> str:
    if kind != "text":
        raise invalid(f"only text content parts are supported, got {short_repr(kind)}")
    return kind


class TextPart(BaseModel):
    model_config = STRICT

    type: Annotated[str, AfterValidator(_text_only)]
    text: str


def _content(value: object) -> object:
    """A string stands for one text part; anything but a string or a list of text parts is
    refused here, naming the content as a whole (images, audio, files are not supported)."""
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if not isinstance(value, list):
        raise invalid(f"must be a string or a list of text parts, got {short_repr(value)}")
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if isinstance(kind, str) and kind != "text":
            raise invalid(f"only text content parts are supported, got {short_repr(kind)} "
                          f"at part {index}")
    return value


def _role(value: str) -> str:
    if value in TOOL_ROLES:
        raise invalid(f"{value!r} messages are not supported: tool calling is not")
    if value not in ROLES:
        raise invalid(f"must be one of {', '.join(ROLES)}, got {short_repr(value)}")
    return value


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Annotated[str, AfterValidator(_role)]
    content: Annotated[list[TextPart], BeforeValidator(_content)]
    name: str | None = None

    def for_template(self) -> dict[str, str]:
        """The turn as the chat template takes it: text parts joined by newlines, and
        `developer` (OpenAI's newer name for the system turn) as `system`, the role chat
        templates know."""
        turn = {"role": "system" if self.role == "developer" else self.role,
                "content": "\n".join(part.text for part in self.content)}
        if self.name is not None:
            turn["name"] = self.name
        return turn


class ChatMessages(BaseModel):
    model_config = STRICT

    messages: Annotated[list[ChatMessage], Field(min_length=1)]


def chat_messages(messages: object) -> list[dict[str, str]]:
    """A conversation validated as a chat request's `messages` (roles, content), as the chat
    template takes it (`ChatMessage.for_template`). Every door's messages go through here."""
    checked = validate_body(ChatMessages, {"messages": messages})
    return [message.for_template() for message in checked.messages]


class ChatCompletionRequest(_Common):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Int | None = None
    logprobs: Annotated[Any, neutral(False)] = None
    top_logprobs: Annotated[Any, neutral(0)] = None
    response_format: Annotated[Any, neutral({"type": "text"})] = None
    tools: Annotated[Any, neutral([])] = None
    tool_choice: Annotated[Any, neutral("none")] = None
    parallel_tool_calls: bool | None = None  # without tools it changes nothing
    functions: Annotated[Any, neutral([])] = None
    function_call: Annotated[Any, neutral("none")] = None
    modalities: Annotated[Any, neutral(["text"])] = None
    audio: Annotated[Any, neutral()] = None
    prediction: Annotated[Any, neutral()] = None
    reasoning_effort: Annotated[Any, neutral()] = None
    web_search_options: Annotated[Any, neutral()] = None
    store: Annotated[Any, neutral(False)] = None
    metadata: dict[str, str] | None = None  # tags for stored completions: changes no output
    service_tier: Annotated[Any, neutral("auto", "default")] = None
