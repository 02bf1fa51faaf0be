"""The batched sampler: one pass over a batch whose rows each have their own parameters.

Order, per row: penalties on raw logits -> greedy rows take the argmax; sampled rows divide
by temperature -> softmax -> top-k, top-p, min-p masks -> exponential race (see
`exponential_race`), which needs no renormalization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from radixmesh.services.worker.sampling.penalties import PenaltyState
from radixmesh.services.worker.sampling.random import exponential_race, token_keys
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch
from radixmesh.shared.sampling_params import SamplingParams

Race = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Sampler:
    """Samples one token per row and keeps the penalty counts of the requests that need them.

    `vocab_size` is the width of the logits (the model's padded vocabulary, which can exceed
    the tokenizer's); every column can be drawn. `slots` are the worker's request slots in
    `[0, max_slots)`. The penalty state is allocated only when a request first uses penalties.
    `compile_race` (default: on CUDA) fuses the hash, the noise and the argmax into one kernel
    with `torch.compile`; eager mode runs ~20 passes over [B, V] int64 temporaries instead.
    """

    def __init__(self, vocab_size: int, max_slots: int, device: torch.device | str,
                 compile_race: bool | None = None) -> None:
        self.vocab_size = vocab_size
        self.max_slots = max_slots
        self.device = torch.device(device)
        self.penalties: PenaltyState | None = None
        self._token_keys = token_keys(vocab_size, self.device)
        if compile_race is None:
            compile_race = self.device.type == "cuda"
        self._race: Race = (torch.compile(exponential_race, dynamic=True) if compile_race
                            else exponential_race)

    def add_request(self, slot: int, params: SamplingParams, prompt_ids: Sequence[int],
                    output_ids: Sequence[int]) -> None:
        """Registers a request (again, after a retraction: `output_ids` is its output so far)."""
        if params.has_penalties:
            if self.penalties is None:
                self.penalties = PenaltyState(self.max_slots, self.vocab_size, self.device)
            self.penalties.add(slot, prompt_ids, output_ids)
        elif self.penalties is not None:
            self.penalties.release(slot)

    def release_request(self, slot: int) -> None:
        if self.penalties is not None:
            self.penalties.release(slot)

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """Next token per row, [B] int64, from `logits` [B, V]; records them for penalties."""
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} columns, expected {self.vocab_size}")
        logits = logits.float()
        if batch.needs_penalties:
            logits = self._penalty_state().apply(
                logits, batch.slots, batch.frequency_penalties, batch.presence_penalties,
                batch.repetition_penalties)
        if batch.all_greedy:
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._draw(logits, batch)
        if batch.needs_penalties:
            # Only penalized requests read their counts; rows of other requests write into
            # slots that are cleared when those requests are released.
            self._penalty_state().record(batch.slots, tokens)
        return tokens

    def _draw(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        probs = torch.softmax(logits / batch.temperatures[:, None], dim=-1)
        if batch.needs_filter:
            probs = filter_probs(probs, batch)
        sampled = self._race(probs, batch.seeds, batch.output_positions, self._token_keys)
        if batch.any_greedy:
            sampled = torch.where(batch.is_greedy, logits.argmax(dim=-1), sampled)
        return sampled

    def _penalty_state(self) -> PenaltyState:
        if self.penalties is None:
            raise RuntimeError("a row uses penalties but no request registered any: "
                               "call add_request before sampling")
        return self.penalties


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
