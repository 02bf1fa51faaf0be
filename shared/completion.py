"""One request's whole output, accumulated from its streamed deltas.

The front door's request stream (`collect`), the Python client (`complete`) and the
in-process engine all add deltas up the same way: text appends, token ids extend, and the
finishing delta's finish and usage are kept. This is that one accumulator.

It is generic in how a delta spells its ending: the cores' `TextDelta` carries a
`FinishReason` and a `Usage` (`TextCompletion`); the client's `GenerateChunk` carries their
JSON-shaped dicts, which are its public surface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from radixmesh.shared.requests import FinishReason, Usage

FinishT = TypeVar("FinishT")
UsageT = TypeVar("UsageT")
FinishT_co = TypeVar("FinishT_co", covariant=True)
UsageT_co = TypeVar("UsageT_co", covariant=True)


class Delta(Protocol[FinishT_co, UsageT_co]):
    """What one streamed message of a request says; `finish` and `usage` only on its last."""

    @property
    def text(self) -> str: ...
    @property
    def token_ids(self) -> list[int]: ...
    @property
    def finish(self) -> FinishT_co | None: ...
    @property
    def usage(self) -> UsageT_co | None: ...


@dataclass(slots=True)
class Completion(Generic[FinishT, UsageT]):
    """A whole generation, accumulated from its deltas with `add`."""

    rid: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish: FinishT | None = None
    usage: UsageT | None = None

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def add(self, delta: Delta[FinishT, UsageT]) -> None:
        self.text += delta.text
        self.token_ids.extend(delta.token_ids)
        if delta.finish is not None:
            self.finish, self.usage = delta.finish, delta.usage


# What the cores accumulate from TextDeltas (the front door, the engine).
TextCompletion = Completion[FinishReason, Usage]
