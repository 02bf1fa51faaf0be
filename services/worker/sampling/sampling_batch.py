"""One step's sampling parameters as device tensors, one row per sampled request."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from radixmesh.services.worker.host_to_device import to_device
from radixmesh.shared.sampling_params import SamplingParams

NO_TOP_K = 2**31 - 1  # "no limit": larger than any vocabulary, clamped to the logits' width
_FLOAT_FIELDS = 6
_INT_FIELDS = 5


@dataclass(slots=True)
class SamplingBatch:
    """Per-row sampling parameters for one step, rows in batch order, all on one device.

    Invariants: greedy rows carry temperature 1 and neutral top-k/top-p/min-p (their sampled
    branch is computed but discarded), so no row ever divides by zero. Everything the sampler
    branches on (flags, row groups, `max_top_k`) is decided on the host when the batch is
    built, so sampling never reads anything back from the device.
    """

    temperatures: torch.Tensor          # [B] float32
    top_ks: torch.Tensor                # [B] int64, NO_TOP_K where unlimited
    top_ps: torch.Tensor                # [B] float32
    min_ps: torch.Tensor                # [B] float32
    frequency_penalties: torch.Tensor   # [B] float32
    presence_penalties: torch.Tensor    # [B] float32
    repetition_penalties: torch.Tensor  # [B] float32
    seeds: torch.Tensor                 # [B] int64
    output_positions: torch.Tensor      # [B] int64: output tokens the row had before this draw
    slots: torch.Tensor                 # [B] int64: the request's penalty-state slot
    is_greedy: torch.Tensor             # [B] bool
    top_p_rows: torch.Tensor | None     # sampled rows with top_p < 1 (they need a full sort)
    top_k_rows: torch.Tensor | None     # sampled rows limiting top-k alone (a top-k suffices)
    max_top_k: int                      # the largest top-k among `top_k_rows`
    # [B] bool: sampled rows whose request brought its own `seed` (None when no row did);
    # a backend whose kernels cannot honour per-request seeds draws these rows apart.
    own_seeds: torch.Tensor | None
    all_own_seeds: bool  # every sampled row brought its own seed
    all_greedy: bool
    any_greedy: bool
    needs_min_p: bool      # some sampled row sets min-p
    needs_penalties: bool  # some row sets a frequency, presence or repetition penalty

    @property
    def size(self) -> int:
        return int(self.seeds.shape[0])

    @property
    def needs_filter(self) -> bool:
        return self.top_p_rows is not None or self.top_k_rows is not None or self.needs_min_p

    @classmethod
    def build(cls, params: Sequence[SamplingParams], seeds: Sequence[int],
              output_positions: Sequence[int], slots: Sequence[int],
              device: torch.device | str) -> SamplingBatch:
        """`seeds` are the resolved seeds (the request's own, or one drawn for it at
        registration); `output_positions[i]` counts the outputs row `i` had before this draw.
        `params[i].seed` tells whether row i's request brought its own seed (`own_seeds`).
        All values travel in one float and one integer tensor: two host-to-device copies.
        """
        size = len(params)
        if not size == len(seeds) == len(output_positions) == len(slots):
            raise ValueError("params, seeds, output_positions and slots must have equal lengths")
        greedy = [p.is_greedy for p in params]
        sampled = [(i, p) for i, (p, g) in enumerate(zip(params, greedy, strict=True)) if not g]
        top_p_rows = [i for i, p in sampled if p.top_p < 1.0]
        top_k_rows = [i for i, p in sampled if p.top_p >= 1.0 and p.top_k > 1]
        own_seed_rows = {i for i, p in sampled if p.seed is not None}
        own_seeds = [i in own_seed_rows for i in range(size)] if own_seed_rows else []
        device = torch.device(device)
        floats = to_device(
            [1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]
            + [1.0 if g else p.top_p for p, g in zip(params, greedy, strict=True)]
            + [0.0 if g else p.min_p for p, g in zip(params, greedy, strict=True)]
            + [p.frequency_penalty for p in params]
            + [p.presence_penalty for p in params]
            + [p.repetition_penalty for p in params],
            torch.float32, device).view(_FLOAT_FIELDS, size)
        # Clamped, as a top-k beyond the vocabulary is no limit and may not fit in int64.
        top_ks = [NO_TOP_K if g or p.top_k <= 0 else min(p.top_k, NO_TOP_K)
                  for p, g in zip(params, greedy, strict=True)]
        ints = to_device(top_ks + list(seeds) + list(output_positions) + list(slots) + greedy
                         + own_seeds + top_p_rows + top_k_rows, torch.int64, device)
        num_fields = _INT_FIELDS + (1 if own_seeds else 0)
        fields = ints[:num_fields * size].view(num_fields, size)
        groups = ints[num_fields * size:].split([len(top_p_rows), len(top_k_rows)])
        return cls(
            temperatures=floats[0], top_ps=floats[1], min_ps=floats[2],
            frequency_penalties=floats[3], presence_penalties=floats[4],
            repetition_penalties=floats[5],
            top_ks=fields[0], seeds=fields[1], output_positions=fields[2], slots=fields[3],
            is_greedy=fields[4].bool(),
            top_p_rows=groups[0] if top_p_rows else None,
            top_k_rows=groups[1] if top_k_rows else None,
            max_top_k=max((params[i].top_k for i in top_k_rows), default=0),
            own_seeds=fields[5].bool() if own_seeds else None,
            all_own_seeds=bool(sampled) and len(own_seed_rows) == len(sampled),
            all_greedy=not sampled,
            any_greedy=len(sampled) < size,
            needs_min_p=any(p.min_p > 0.0 for _, p in sampled),
            needs_penalties=any(p.has_penalties for p in params),
        )


class SampledRow(Protocol):
    """What a batch row needs of its request (the worker's WorkerRequest)."""

    sampling: SamplingParams
    seed: int
    slot: int

    @property
    def drawing_output_index(self) -> int: ...


class SamplingBatches:
    """Builds each step's SamplingBatch, reusing the last one while the step samples the same
    requests in the same order: then only the output positions differ, one small copy instead
    of a pass over every row's parameters (issue 16: steady decode at large batch).

    Rows are compared by identity, and the last step's requests are held, so a request that
    ended cannot be mistaken for a new one in its place; a request registered again (after a
    retraction) is a new object, with its seed drawn anew.
    """

    def __init__(self, device: torch.device | str) -> None:
        self._device = torch.device(device)
        self._rows: list[SampledRow] = []
        self._batch: SamplingBatch | None = None

    def build(self, rows: list[SampledRow]) -> SamplingBatch:
        positions = [row.drawing_output_index for row in rows]
        if (self._batch is not None and len(rows) == len(self._rows)
                and all(map(operator.is_, rows, self._rows))):
            return dataclasses.replace(
                self._batch, output_positions=to_device(positions, torch.int64, self._device))
        self._batch = SamplingBatch.build([row.sampling for row in rows],
                                          [row.seed for row in rows], positions,
                                          [row.slot for row in rows], self._device)
        self._rows = list(rows)
        return self._batch
