"""Turns a client's JSON-like request body into a validated `TokenizedRequest`.

Body: exactly one prompt field (`input_ids`, `text` or `messages`) plus the sampling fields
of `SamplingParams` at the top level. Every rejection is an `InvalidRequestError` naming the
offending field. The checks are plain functions, apart from the tokenizer, so each can be
tested alone; `RequestBuilder` only sequences them around tokenization.
"""

from __future__ import annotations

from collections.abc import Mapping

from radixmesh.services.tokenizer.limits import apply_limits
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.tokenizer import TextTokenizer

PROMPT_FIELDS: tuple[str, ...] = ("input_ids", "text", "messages")
SAMPLING_FIELDS: frozenset[str] = frozenset(SamplingParams.__dataclass_fields__)
KNOWN_FIELDS: frozenset[str] = frozenset(PROMPT_FIELDS) | SAMPLING_FIELDS
# Names the prompt as a whole when the error is about which prompt field to use.
PROMPT_GROUP = "prompt"


def check_known_fields(body: object) -> None:
    if not isinstance(body, Mapping):
        raise InvalidRequestError("body", f"must be a JSON object, got {type(body).__name__}")
    unknown = sorted(str(key) for key in body if key not in KNOWN_FIELDS)
    if unknown:
        raise InvalidRequestError(unknown[0], "unknown field")


def select_prompt_field(body: Mapping) -> str:
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
    return value


def check_messages(value: object) -> list[dict]:
    """A non-empty list of {role, content} dicts with string values; other keys pass through."""
    if not isinstance(value, list):
        raise InvalidRequestError("messages", "must be a list of {role, content} objects")
    if not value:
        raise InvalidRequestError("messages", "must not be empty")
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise InvalidRequestError(where, "must be an object with role and content")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise InvalidRequestError(f"{where}.{key}", "must be a string")
        if not message["role"]:
            raise InvalidRequestError(f"{where}.role", "must not be empty")
    return [dict(message) for message in value]


def build_sampling_params(body: Mapping, vocab_size: int) -> SamplingParams:
    """Sampling fields of the body; a JSON null means "use the default"."""
    values = {key: body[key] for key in SAMPLING_FIELDS if body.get(key) is not None}
    params = SamplingParams.from_dict(values)
    params.validate(vocab_size)
    return params


class RequestBuilder:
    """Validates and tokenizes request bodies for one model.

    Without a tokenizer (a model served from token ids alone) only `input_ids` is accepted.
    """

    def __init__(self, tokenizer: TextTokenizer | None, vocab_size: int, context_len: int,
                 max_total_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.context_len = context_len
        # The KV pool: a request that can never fit it would wait in the queue forever.
        self.max_total_tokens = max_total_tokens or context_len

    def build(self, rid: str, body: dict) -> TokenizedRequest:
        check_known_fields(body)
        prompt_field = select_prompt_field(body)
        sampling = build_sampling_params(body, self.vocab_size)
        input_ids = self._prompt_ids(prompt_field, body[prompt_field])
        request = TokenizedRequest(rid=rid, input_ids=input_ids, sampling=sampling)
        return apply_limits(request, prompt_field, self.context_len, self.max_total_tokens,
                            max_new_tokens_given=body.get("max_new_tokens") is not None)

    def _prompt_ids(self, field: str, value: object) -> tuple[int, ...]:
        if field == "input_ids":
            return check_input_ids(value, self.vocab_size)
        if self.tokenizer is None:
            raise InvalidRequestError(
                field, "this model has no tokenizer: send the prompt as input_ids")
        if field == "text":
            ids = self.tokenizer.encode(check_text(value))
        else:
            ids = self.tokenizer.apply_chat_template(check_messages(value))
        if not ids:
            raise InvalidRequestError(field, "tokenizes to no tokens")
        # The tokenizer may know more ids than the model has embedding rows for.
        return check_input_ids(ids, self.vocab_size, field)
