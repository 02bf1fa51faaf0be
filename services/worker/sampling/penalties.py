"""Per-slot token statistics on the device, and the penalties computed from them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from radixmesh.services.worker.host_to_device import to_device


class PenaltyState:
    """Which tokens each running request has seen, kept on the device by slot.

    Row `slot` describes exactly the request registered in that slot: `prompt_mask` marks
    its prompt tokens and `output_counts` counts its output tokens. Both rows are cleared
    on `release` and rebuilt by `add`, so a slot never leaks counts to its next owner.
    `vocab_size` is the width of the logits (the model's padded vocabulary).
    """

    def __init__(self, max_slots: int, vocab_size: int, device: torch.device | str) -> None:
        self.max_slots = max_slots
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.prompt_mask = torch.zeros(max_slots, vocab_size, dtype=torch.bool, device=device)
        self.output_counts = torch.zeros(max_slots, vocab_size, dtype=torch.int32,
                                         device=device)

    def add(self, slot: int, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> None:
        """Registers a request, or re-registers it after a retraction with its output so far."""
        self.release(slot)
        if prompt_ids:
            self.prompt_mask[slot, self._ids(prompt_ids)] = True
        if output_ids:
            ids = self._ids(output_ids)
            self.output_counts[slot].index_put_((ids,), self._ones(ids), accumulate=True)

    def release(self, slot: int) -> None:
        self.prompt_mask[slot].zero_()
        self.output_counts[slot].zero_()

    def record(self, slots: torch.Tensor, token_ids: torch.Tensor) -> None:
        """Counts one new output token per row: `token_ids[i]` for the request in `slots[i]`."""
        self.output_counts.index_put_((slots, token_ids), self._ones(token_ids),
                                      accumulate=True)

    def apply(self, logits: torch.Tensor, slots: torch.Tensor, frequency: torch.Tensor,
              presence: torch.Tensor, repetition: torch.Tensor) -> torch.Tensor:
        """Penalized copy of `logits` [B, V] (vLLM semantics), rows matching `slots` [B].

        Repetition divides positive logits (multiplies negative ones) of tokens seen in the
        prompt or the output; then frequency subtracts `f * count` and presence `p * (count >
        0)`, both over output tokens only. Neutral rows (0, 0, 1) come back bit-identical.
        """
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} columns, "
                             f"penalty state has {self.vocab_size}")
        counts = self.output_counts[slots]
        in_output = counts > 0
        seen = self.prompt_mask[slots] | in_output
        rep = repetition[:, None]
        repeated = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen, repeated, logits)
        logits = logits - frequency[:, None] * counts.to(logits.dtype)
        return logits - presence[:, None] * in_output.to(logits.dtype)

    def _ids(self, ids: Sequence[int]) -> torch.Tensor:
        return to_device(list(ids), torch.int64, self.device)

    @staticmethod
    def _ones(ids: torch.Tensor) -> torch.Tensor:
        return torch.ones(ids.shape, dtype=torch.int32, device=ids.device)
