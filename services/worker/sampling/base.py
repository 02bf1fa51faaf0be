"""The sampling backend interface: what every `--sampling-backend` implementation keeps."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from radixmesh.services.worker.jit_module import JitModule
from radixmesh.services.worker.sampling.penalties import PenaltyState
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatch
from radixmesh.shared.sampling_params import SamplingParams


class SamplingBackend(ABC):
    """Samples one token per row and keeps the penalty counts of the requests that need them.

    Invariants every backend keeps:
    - `sample(logits [B, V], batch)` returns exactly one token id per row, [B] int64 on the
      logits' device, each in [0, V); `vocab_size` is the width of the logits (the model's
      padded vocabulary, which can exceed the tokenizer's) and every column can be drawn.
    - Penalties are applied here, the same way for every backend, before anything else:
      `PenaltyState.apply` on the float32 logits (vLLM's semantics); the drawn tokens are then
      recorded for the penalised rows. A backend sees only penalised logits.
    - Greedy rows (`batch.is_greedy`) get exactly `argmax` of the penalised logits.
    - Sampled rows draw from softmax(penalised logits / temperature) restricted by top-k, then
      top-p measured on the top-k mass, then min-p relative to the most likely token.
    - A request that brought its own `seed` draws reproducibly: the same token for the same
      logits, seed and output position whatever else is in the batch, on any backend (a
      backend whose kernels cannot honour per-request seeds draws those rows through the
      pytorch backend's counter-based race, so the two backends agree on them bit for bit).
    - Nothing is read back from the device: every branch is decided on the host when the
      SamplingBatch is built.
    `slots` are the worker's request slots in [0, max_slots); the penalty state is allocated
    only when a request first uses penalties. Backends are chosen by name from the registry in
    sampling/registry.py.
    """

    name: ClassVar[str] = ""

    def __init__(self, vocab_size: int, max_slots: int, device: torch.device | str) -> None:
        self.vocab_size = vocab_size
        self.max_slots = max_slots
        self.device = torch.device(device)
        self.penalties: PenaltyState | None = None

    @classmethod
    def missing(cls, device: torch.device) -> str | None:
        """What this machine lacks to run the backend on `device` (None: nothing)."""
        return None

    @classmethod
    def kernel_builds(cls) -> list[JitModule]:
        """The JIT modules the backend's kernels need, safe to build and load on another
        thread before the backend is made (a module loaded there makes the first use a
        lookup); the worker builds them while it loads weights (kernel_builds.py). Called on
        the worker's main thread, only where `missing` found nothing."""
        return []

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
            tokens = self.draw(logits, batch)
        if batch.needs_penalties:
            # Only penalized requests read their counts; rows of other requests write into
            # slots that are cleared when those requests are released.
            self._penalty_state().record(batch.slots, tokens)
        return tokens

    @abstractmethod
    def draw(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """One token per row, [B] int64, from penalised float32 `logits` [B, V] of a batch
        with at least one sampled row; greedy rows must come back as their argmax."""

    def _penalty_state(self) -> PenaltyState:
        if self.penalties is None:
            raise RuntimeError("a row uses penalties but no request registered any: "
                               "call add_request before sampling")
        return self.penalties
