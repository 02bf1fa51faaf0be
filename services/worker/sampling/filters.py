"""Top-k, top-p and min-p as probability floors: the pytorch sampler's filters."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch


def filter_probs(probs: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Zeroes, per row of `probs` [B, V], the tokens outside top-k, then top-p, then min-p.

    Top-p is measured on the top-k tokens' renormalized distribution (as vLLM and FlashInfer
    do); min-p drops tokens below `min_p * max_prob`. Every mask is a probability floor and
    keeps all tokens tied with its last kept one, so the result depends only on a row's own
    values, never on how a sort breaks ties or which rows share the batch. The most likely
    token always survives. Only rows that limit top-p pay for a full sort.
    """
    floor = probs.new_zeros(len(probs))
    if batch.top_k_rows is not None:
        rows = batch.top_k_rows
        floor[rows] = _top_k_floor(probs[rows], batch.top_ks[rows], batch.max_top_k)
    if batch.top_p_rows is not None:
        rows = batch.top_p_rows
        floor[rows] = _top_k_top_p_floor(probs[rows], batch.top_ks[rows], batch.top_ps[rows])
    if batch.needs_min_p:
        floor = torch.maximum(floor, batch.min_ps * probs.amax(dim=-1))
    return probs.masked_fill(probs < floor[:, None], 0.0)


def _top_k_floor(probs: torch.Tensor, top_ks: torch.Tensor, max_top_k: int) -> torch.Tensor:
    """The k-th largest probability per row [B]: exact values, so no sort order can leak in."""
    vocab = probs.shape[-1]
    largest = probs.topk(min(max_top_k, vocab), dim=-1).values
    return largest.gather(1, top_ks.clamp(1, largest.shape[-1])[:, None] - 1).squeeze(1)


def _top_k_top_p_floor(probs: torch.Tensor, top_ks: torch.Tensor,
                       top_ps: torch.Tensor) -> torch.Tensor:
    """The smallest kept probability per row [B] under top-k then top-p.

    In descending order the top-k tokens form a prefix of length `n_k`; top-p keeps the
    prefix of entries whose exclusive cumulative probability is below `top_p` times that
    prefix's mass, i.e. the shortest prefix reaching `top_p` (at least one entry).
    """
    descending = probs.sort(dim=-1, descending=True).values
    k = top_ks.clamp(1, probs.shape[-1])[:, None]
    top_k_floor = descending.gather(1, k - 1)
    n_top_k = (descending >= top_k_floor).sum(dim=-1, keepdim=True)
    cumulative = descending.cumsum(dim=-1)
    top_k_mass = cumulative.gather(1, n_top_k - 1)
    exclusive = F.pad(cumulative[:, :-1], (1, 0))
    reaching = (exclusive < top_ps[:, None] * top_k_mass).sum(dim=-1, keepdim=True)
    n_top_p = torch.minimum(reaching, n_top_k).clamp_(min=1)
    return descending.gather(1, n_top_p - 1).squeeze(1)
