"""Stop conditions on token ids. Stop strings are the detokenizer's job (design §2)."""

from __future__ import annotations

from radixmesh.services.scheduler.request import SchedReq
from radixmesh.shared.requests import FinishKind, FinishReason


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
