"""Field types the request models share: strict scalars, stop lists, and options we accept
only at their defaults.

Models are strict (no coercion: `"5"` is not an integer, `true` is not 1) and forbid unknown
fields. Types and shapes are declared here; ranges stay with `SamplingParams.validate`, the one
sampling validator every entry (HTTP, gRPC, the scheduler's own) runs, so that a limit cannot
differ between doors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from radixmesh.shared.front_door.validation_errors import short_repr

# Every request model's configuration.
STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)

Int = int
# JSON may spell NaN and Infinity (Python's json reads them); no sampling field takes them.
Float = Annotated[float, Field(allow_inf_nan=False)]
TokenIds = list[int]


def invalid(message: str) -> PydanticCustomError:
    """A validation error with our message (kept apart from pydantic's `{}` templating)."""
    return PydanticCustomError("invalid", "{detail}", {"detail": message})


def _same(value: object, allowed: object) -> bool:
    """Equal and of the same type: JSON's `true` is not the default `1`."""
    return type(value) is type(allowed) and value == allowed


def neutral(*allowed: object) -> AfterValidator:
    """A field we do not implement (declared `Annotated[Any, neutral(...)] = None`): accepted
    as JSON null or at `allowed` only, its default values that ask for nothing we lack; any
    other value is refused by name."""
    default = repr(allowed[0]) if allowed else "null"

    def check(value: object) -> object:
        if value is None or any(_same(value, ok) for ok in allowed):
            return value
        raise invalid(f"is not supported except at its default ({default}), got "
                      f"{short_repr(value)}")

    return AfterValidator(check)


def _one_or_many(value: object) -> object:
    """A lone stop string counts as a list of one, as OpenAI and SGLang take it."""
    if isinstance(value, str):
        return [value]
    if value is not None and not isinstance(value, list):
        raise invalid(f"must be a string or a list of strings, got {short_repr(value)}")
    return value


StopStrings = Annotated[list[str], BeforeValidator(_one_or_many)]


def not_a_batch(what: str) -> Callable[[object], object]:
    """A before-validator refusing a batch (a list of prompts) with a clear message."""

    def check(value: object) -> object:
        if isinstance(value, list) and value and all(isinstance(v, (str, list)) for v in value):
            raise invalid(f"batches of {what} are not supported; send one prompt per request")
        return value

    return check
