"""Pydantic's validation errors -> our InvalidRequestError, in the front door's words.

The request models (`openai_models.py`, `native_models.py`) declare what a body may hold;
`validate_body` runs one and turns the first error into an InvalidRequestError whose `field`
is the path of the parameter at fault as OpenAI writes it (`messages[2].content`,
`sampling_params.top_k`) and whose message says what was wrong in the style of the other
checks ("must be a boolean, got 'yes'"). An unknown top-level parameter is reported before
anything else: a misspelled option is the likeliest cause of the other errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from radixmesh.shared.errors import InvalidRequestError

ModelT = TypeVar("ModelT", bound=BaseModel)
UNKNOWN_FIELD = "unknown or unsupported parameter"
# What a value must be, by pydantic's error type (strict mode: no coercion between types).
_MUST_BE = {
    "bool_type": "a boolean", "int_type": "an integer", "float_type": "a number",
    "string_type": "a string", "list_type": "a list", "dict_type": "an object",
    "model_type": "an object", "model_attributes_type": "an object",
    "finite_number": "a finite number",
}


def short_repr(value: object, limit: int = 80) -> str:
    """`value`'s repr, cut: an error message must not echo a megabyte back."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."


def field_path(loc: Sequence[int | str], root: str = "body") -> str:
    """A pydantic location as OpenAI names a parameter: `messages[0].content`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part != "[key]":
            path += f".{part}" if path else part
    return path or root


def describe(error: ErrorDetails) -> str:
    """The message of one error, without its location."""
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return UNKNOWN_FIELD
    if kind in _MUST_BE:
        return f"must be {_MUST_BE[kind]}, got {short_repr(error.get('input'))}"
    if kind == "literal_error":
        return (f"must be {error.get('ctx', {}).get('expected')}, got "
                f"{short_repr(error.get('input'))}")
    if kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        return "must not be empty"
    message = error["msg"]
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def first_error(exc: ValidationError, root: str = "body") -> InvalidRequestError:
    """The error to report: the first unknown top-level parameter, else the first error (in
    the order the model declares its fields)."""
    errors = exc.errors(include_url=False)
    chosen = next((e for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1),
                  errors[0])
    return InvalidRequestError(field_path(chosen["loc"], root), describe(chosen))


def validate_body(model: type[ModelT], payload: object, root: str = "body") -> ModelT:
    """`payload` (decoded JSON) as `model`; InvalidRequestError naming the field otherwise."""
    if not isinstance(payload, Mapping):
        raise InvalidRequestError(root, f"must be a JSON object, got {type(payload).__name__}")
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise first_error(exc, root) from None
