"""Turns a client's request into a validated `TokenizedRequest`.

A JSON-like body (HTTP, `offline`) holds exactly one prompt field (`input_ids`, `text` or
`messages`) plus the sampling fields of `SamplingParams` and an optional `cache_salt` (vLLM's
prefix-cache isolation) at the top level; `parse_body` gives
its shape as a `RequestBody`, which the public gRPC door builds straight from its message.
Either way `RequestBuilder` validates the sampling once (`SamplingParams.validate`) and the
prompt, then tokenizes. Every rejection is an `InvalidRequestError` naming the offending
field. The checks are plain functions, apart from the tokenizer, so each can be tested alone.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass

from jinja2 import TemplateError

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.chat_encoding import encode_chat
from radixmesh.shared.front_door.limits import apply_limits
from radixmesh.shared.front_door.openai_models import chat_messages
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.text_checks import check_cache_salt, check_utf8
from radixmesh.shared.tokenizer import TextTokenizer

PROMPT_FIELDS: tuple[str, ...] = ("input_ids", "text", "messages")
SAMPLING_FIELDS: frozenset[str] = frozenset(SamplingParams.__dataclass_fields__)
CACHE_SALT = "cache_salt"
KNOWN_FIELDS: frozenset[str] = frozenset(PROMPT_FIELDS) | SAMPLING_FIELDS | {CACHE_SALT}
# Names the prompt as a whole when the error is about which prompt field to use.
PROMPT_GROUP = "prompt"


def check_known_fields(body: object) -> Mapping:
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", f"must be a JSON object, got {type(body).__name__}")
    unknown = sorted(str(key) for key in body if key not in KNOWN_FIELDS)
    if unknown:
        raise InvalidRequestError(unknown[0], "unknown field")
    return body


@dataclass(frozen=True, slots=True)
class RequestBody:
    """A request whose shape is known: its prompt field and value, and its sampling
    parameters, none of them validated yet."""

    prompt_field: str                    # one of PROMPT_FIELDS
    prompt: object
    sampling: SamplingParams = SamplingParams()
    max_new_tokens_given: bool = False   # False: a default that the limits may shrink
    cache_salt: object = None            # None: no salt; checked by RequestBuilder


def parse_body(body: object) -> RequestBody:
    """The shape of a JSON-like body; a JSON null sampling field means "use the default"."""
    fields = check_known_fields(body)
    prompt_field = select_prompt_field(fields)
    values = {key: fields[key] for key in SAMPLING_FIELDS if fields.get(key) is not None}
    return RequestBody(prompt_field, fields[prompt_field], SamplingParams.from_dict(values),
                       max_new_tokens_given="max_new_tokens" in values,
                       cache_salt=fields.get(CACHE_SALT))


def select_prompt_field(body: Container[str]) -> str:
    """The one prompt field present; both none and several are errors."""
    present = [name for name in PROMPT_FIELDS if name in body]
    if len(present) != 1:
        got = ", ".join(present) if present else "none"
        raise InvalidRequestError(
            PROMPT_GROUP, f"exactly one of input_ids, text or messages is required, got {got}")
    return present[0]


def check_input_ids(value: object, vocab_size: int,
                    field: str = "input_ids") -> tuple[int, ...]:
    """The ids as a tuple, each an int in [0, vocab_size); names the first bad one.

    `field` names where the ids came from, for ids produced by tokenizing text or messages.
    """
    if not isinstance(value, (list, tuple)):
        raise InvalidRequestError(field, "must be a list of integers")
    if not value:
        raise InvalidRequestError(field, "must not be empty")
    for position, token_id in enumerate(value):
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise InvalidRequestError(
                field, f"must be integers, got {token_id!r} at position {position}")
        if not 0 <= token_id < vocab_size:
            raise InvalidRequestError(
                field, f"token id {token_id} at position {position} is outside the "
                f"vocabulary [0, {vocab_size})")
    return tuple(value)


def check_text(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError("text", f"must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidRequestError("text", "must not be empty")
    return check_utf8("text", value)  # the tokenizer raises a TypeError on a lone surrogate


def check_messages(value: object) -> list[dict]:
    """A non-empty list of chat turns, validated as a chat request's `messages` are (roles,
    content, no unknown keys), as the chat template takes them; each string valid UTF-8."""
    turns = chat_messages(value)
    for index, turn in enumerate(turns):
        for key, text in turn.items():
            check_utf8(f"messages[{index}].{key}", text)
    return turns


class RequestBuilder:
    """Validates and tokenizes request bodies for one model.

    Without a tokenizer (a model served from token ids alone) only `input_ids` is accepted.
    Special-token text in chat content is plain text unless `allow_special_tokens_in_content`
    (`chat_encoding.py`).
    """

    def __init__(self, tokenizer: TextTokenizer | None, vocab_size: int, context_len: int,
                 max_total_tokens: int | None = None,
                 allow_special_tokens_in_content: bool = False) -> None:
        self.tokenizer = tokenizer
        self.allow_special_tokens_in_content = allow_special_tokens_in_content
        self.vocab_size = vocab_size
        self.context_len = context_len
        # The KV pool: a request that can never fit it would wait in the queue forever.
        self.max_total_tokens = max_total_tokens or context_len

    def build(self, rid: str, body: Mapping | RequestBody) -> TokenizedRequest:
        parsed = body if isinstance(body, RequestBody) else parse_body(body)
        parsed.sampling.validate(self.vocab_size)
        salt = check_cache_salt(parsed.cache_salt)
        input_ids = self._prompt_ids(parsed.prompt_field, parsed.prompt)
        request = TokenizedRequest(rid=rid, input_ids=input_ids, sampling=parsed.sampling,
                                   cache_salt=salt)
        return apply_limits(request, parsed.prompt_field, self.context_len,
                            self.max_total_tokens, parsed.max_new_tokens_given)

    def _prompt_ids(self, field: str, value: object) -> tuple[int, ...]:
        if field == "input_ids":
            return check_input_ids(value, self.vocab_size)
        if self.tokenizer is None:
            raise InvalidRequestError(
                field, "this model has no tokenizer: send the prompt as input_ids")
        if field == "text":
            ids = self.tokenizer.encode(check_text(value))
        else:
            ids = self._encode_chat(check_messages(value))
        if not ids:
            raise InvalidRequestError(field, "tokenizes to no tokens")
        # The tokenizer may know more ids than the model has embedding rows for.
        return check_input_ids(ids, self.vocab_size, field)

    def _encode_chat(self, messages: list[dict]) -> list[int]:
        try:
            return encode_chat(self.tokenizer, messages, self.allow_special_tokens_in_content)
        except TemplateError as exc:  # the template's own rules (e.g. roles must alternate)
            raise InvalidRequestError("messages", f"the model's chat template refused the "
                                      f"conversation: {exc}") from exc
