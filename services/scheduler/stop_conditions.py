"""Stop conditions on token ids. Stop strings are the detokenizer's job (design §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from radixmesh.shared.requests import FinishKind, FinishReason
from radixmesh.shared.sampling_params import SamplingParams

if TYPE_CHECKING:  # request.py holds a StopRule
    from radixmesh.services.scheduler.request import SchedReq


@dataclass(frozen=True, slots=True)
class StopRule:
    """What may end a request, resolved once at its arrival, so that the check every output
    token makes (and the decode planner's "may it grow?") is a set lookup and a comparison.
    `check_stop` stays the one that says why."""

    token_ids: frozenset[int]  # stop tokens, and EOS ids unless ignore_eos
    max_outputs: int           # outputs at which it ends by length (max_new_tokens or context)
    max_seq_len: int           # prompt + max_outputs: its KV never reaches this many tokens

    @classmethod
    def of(cls, sampling: SamplingParams, prompt_len: int, eos_token_ids: frozenset[int],
           context_len: int) -> StopRule:
        token_ids = frozenset(sampling.stop_token_ids)
        if not sampling.ignore_eos:
            token_ids |= eos_token_ids
        max_outputs = min(sampling.max_new_tokens, context_len - prompt_len)
        return cls(token_ids, max_outputs, prompt_len + max_outputs)


def check_stop(req: SchedReq, eos_token_ids: frozenset[int], context_len: int) -> FinishReason | None:
    """Why `req` is done after its newest output token, or None if it goes on."""
    token = req.output_ids[-1]
    if token in req.sampling.stop_token_ids:
        return FinishReason(FinishKind.STOP, matched=token)
    if not req.sampling.ignore_eos and token in eos_token_ids:
        return FinishReason(FinishKind.STOP, matched=token)
    if len(req.output_ids) >= req.sampling.max_new_tokens or req.seq_len >= context_len:
        return FinishReason(FinishKind.LENGTH)
    return None
