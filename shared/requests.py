"""Requests and outputs as they travel between the tokenizer, scheduler and detokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.trace_context import NO_TRACE, TraceContext


@dataclass(frozen=True, slots=True)
class TokenizedRequest:
    """A validated request, ready for the scheduler."""

    rid: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams
    trace: TraceContext = NO_TRACE
    # Prefix-cache isolation (vLLM's cache_salt): only requests of the same salt share pages.
    cache_salt: str | None = None


class FinishKind(StrEnum):
    STOP = "stop"      # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_new_tokens reached
    ABORT = "abort"    # cancelled by the client or failed


@dataclass(frozen=True, slots=True)
class FinishReason:
    kind: FinishKind
    matched: int | str | None = None  # the stop token id or stop string that ended it
    message: str = ""
    # An abort that is an error carries the HTTP status it deserves (400: refused by a
    # service's input checks; 500: a failure), as SGLang's do; None for a client's abort.
    status_code: int | None = None

    def to_dict(self) -> dict:
        out: dict = {"type": self.kind.value}
        if self.matched is not None:
            out["matched"] = self.matched
        if self.message:
            out["message"] = self.message
        if self.status_code is not None:
            out["status_code"] = self.status_code
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}


@dataclass(slots=True)
class TokenDelta:
    """New output tokens of one request from one scheduler step (finish set on its last delta)."""

    rid: str
    token_ids: list[int]
    finish: FinishReason | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class TextDelta:
    """New text of one request from one detokenizer round (finish set on its last delta).

    `token_ids` are the ids of the TokenDelta it came from. `text` may be empty while text is
    held back (a partial character, a possible stop string). A stop string match ends the
    request here with `FinishReason(FinishKind.STOP, matched=<the stop string>)`, before the
    scheduler knows: the caller must abort the request there (`ends_on_stop_string`).
    """

    rid: str
    text: str
    token_ids: list[int]
    finish: FinishReason | None = None
    usage: Usage | None = None

    @property
    def ends_on_stop_string(self) -> bool:
        """True when a stop string ended the request here: whoever routes the delta (the front
        door, the in-process engine) must abort it at the scheduler, which would run on."""
        return (self.finish is not None and self.finish.kind is FinishKind.STOP
                and isinstance(self.finish.matched, str))
