"""One nn.Linear computing several of HF's projections of the same input in a single GEMM.

Llama's attention reads q, k and v off the same hidden states, and its MLP reads gate and up
off the same input: as separate modules that is five GEMM launches per layer where two do, and
at small batch a decode step pays for every launch (small GEMMs also fill the GPU poorly).
A `FusedLinear` stacks the HF weights along the output rows in the order it declares, and names
each block of rows after the HF module it replaces: that is all the loader needs to copy a
checkpoint's `self_attn.q_proj.weight` into rows of `self_attn.qkv_proj.weight`. Quantized
layers (quantization/linear.py) keep a scale per row, so each shard keeps its own scales too.
"""

from __future__ import annotations

import torch
from torch import nn

from radixmesh.services.worker.models.sinks import Cut


class FusedRows:
    """The shard bookkeeping of a fused projection, shared by `FusedLinear` and its quantized
    form: call `set_shards` after the layer's parameters exist.

    Invariants: `shard_rows` holds the shards in the declared (row) order, each shard's row
    slice of every row-aligned parameter (`weight`, `bias`, per-row scales), and the slices
    tile [0, out_features) without gaps. A shard's HF name is relative to this module's
    parent: `qkv_proj` with shard `q_proj` in `model.layers.0.self_attn` stands for
    `model.layers.0.self_attn.q_proj`.
    """

    shard_rows: dict[str, slice]
    shard_sizes: list[int]
    # Under tensor parallelism, the rows of each shard's full HF tensor this rank holds (a
    # shard absent here holds all of them).
    shard_cuts: dict[str, Cut]

    def set_shards(self, shards: dict[str, int], cuts: dict[str, Cut] | None = None) -> None:
        self.shard_sizes = list(shards.values())
        self.shard_rows = {}
        start = 0
        for name, rows in shards.items():
            self.shard_rows[name] = slice(start, start + rows)
            start += rows
        self.shard_cuts = dict(cuts or {})
        for name, cut in self.shard_cuts.items():
            if (cut.dim, cut.length) != (0, shards[name]):
                raise ValueError(f"shard {name}: {shards[name]} rows, cut {cut}")

    def forward_shards(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each shard's output, in order: column views of one [..., out_features] output."""
        return self(x).split(self.shard_sizes, dim=-1)  # type: ignore[operator]

    def extra_repr(self) -> str:
        shards = ", ".join(f"{name}={rows.stop - rows.start}"
                           for name, rows in self.shard_rows.items())
        return f"{super().extra_repr()}, shards=({shards})"  # type: ignore[misc]


class FusedLinear(FusedRows, nn.Linear):
    """x @ W.T + b, where W (and b) is the row-wise concatenation of the shards' HF weights."""

    def __init__(self, in_features: int, shards: dict[str, int], bias: bool,
                 cuts: dict[str, Cut] | None = None) -> None:
        super().__init__(in_features, sum(shards.values()), bias=bias)
        self.set_shards(shards, cuts)
