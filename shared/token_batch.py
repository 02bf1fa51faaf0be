"""What the scheduler sends the detokenizer once per step: new requests' registrations and
every request's new tokens (design §3: internal links carry whole batches)."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.requests import TokenDelta
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

# Prompt tokens kept before a request's first output token, so the detokenizer decodes the
# first output word in context (some decoders drop a sequence's leading space).
PROMPT_CONTEXT_TOKENS = 5


@dataclass(frozen=True, slots=True)
class DetokenizeRegistration:
    """What the detokenizer must know of a request before its first tokens arrive."""

    rid: str
    stop: tuple[str, ...]
    prompt_tail_ids: tuple[int, ...]  # the last PROMPT_CONTEXT_TOKENS prompt tokens
    num_prompt_tokens: int
    trace: TraceContext = NO_TRACE


@dataclass(slots=True)
class TokenBatch:
    """One message to the detokenizer. Registrations come before any delta of their rid."""

    registrations: list[DetokenizeRegistration] = field(default_factory=list)
    deltas: list[TokenDelta] = field(default_factory=list)
    # Prompt tokens served from the prefix cache, for each rid whose first delta is here.
    num_cached_tokens: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.registrations or self.deltas)
