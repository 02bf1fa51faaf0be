"""The pytorch sampling backend: counter-seeded draws that depend on nothing but the request.

Order, per row: (penalties, in the base class) -> greedy rows take the argmax; sampled rows
divide by temperature -> softmax -> top-k, top-p, min-p masks (filters.py) -> exponential
race (see `exponential_race`), which needs no renormalization. Every draw is a pure function
of the request's seed, its output position and its logits, so it is batch-invariant by
construction: --enable-deterministic-inference always samples here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from radixmesh.services.worker.sampling.base import SamplingBackend
from radixmesh.services.worker.sampling.filters import filter_probs
from radixmesh.services.worker.sampling.random import exponential_race, token_keys
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch

Race = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class PyTorchSampler(SamplingBackend):
    """`compile_race` (default: on CUDA) fuses the hash, the noise and the argmax into one
    kernel with `torch.compile`; eager mode runs ~20 passes over [B, V] int64 temporaries."""

    name = "pytorch"

    def __init__(self, vocab_size: int, max_slots: int, device: torch.device | str,
                 compile_race: bool | None = None) -> None:
        super().__init__(vocab_size, max_slots, device)
        self._token_keys = token_keys(vocab_size, self.device)
        if compile_race is None:
            compile_race = self.device.type == "cuda"
        self._race: Race = (torch.compile(exponential_race, dynamic=True) if compile_race
                            else exponential_race)

    def draw(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        probs = torch.softmax(logits / batch.temperatures[:, None], dim=-1)
        if batch.needs_filter:
            probs = filter_probs(probs, batch)
        sampled = self._race(probs, batch.seeds, batch.output_positions, self._token_keys)
        if batch.any_greedy:
            sampled = torch.where(batch.is_greedy, logits.argmax(dim=-1), sampled)
        return sampled
