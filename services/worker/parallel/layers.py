"""The layers whose output needs the other ranks: a row-split projection (its partial sums are
added up) and the vocabulary-split embedding and LM head.

Each keeps its HF name and parameter names, and says in `checkpoint_cuts` which part of each
full checkpoint tensor it holds, so the loader cuts a rank's share out of HF tensors by name.
At group size 1 the factories build the plain torch modules: one device runs the same model it
always did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radixmesh.services.worker.models.sinks import Cut
from radixmesh.services.worker.parallel.sharding import vocab_range
from radixmesh.services.worker.parallel.tensor_parallel import TensorParallel
from radixmesh.services.worker.quantization.config import QuantizationConfig
from radixmesh.services.worker.quantization.linear import make_linear


class RowParallelLinear(nn.Linear):
    """x @ W.T + b where this rank holds the columns `cut` of W (and x's matching features):
    the ranks' products are summed, then the bias (held whole by every rank) added once."""

    def __init__(self, cut: Cut, out_features: int, bias: bool,
                 parallel: TensorParallel) -> None:
        super().__init__(cut.length, out_features, bias=bias)
        self.parallel = parallel
        self.checkpoint_cuts = {"weight": cut}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.parallel.all_reduce(F.linear(x, self.weight))
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Embedding):
    """The embedding rows of this rank's vocabulary range: other ids look up zeros here and
    their rows come from the rank that holds them, through the all-reduce."""

    def __init__(self, vocab_size: int, hidden_size: int, parallel: TensorParallel) -> None:
        rows, per_rank = vocab_range(vocab_size, parallel)
        super().__init__(per_rank, hidden_size)
        self.parallel, self.rows = parallel, rows
        self.checkpoint_cuts = {"weight": Cut(0, rows.start, rows.stop, vocab_size)}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.rows.start) | (ids >= self.rows.stop)
        local = torch.where(outside, 0, ids - self.rows.start)
        hidden = super().forward(local).masked_fill_(outside[:, None], 0)
        return self.parallel.all_reduce(hidden)


class VocabParallelLMHead(nn.Linear):
    """The LM head's rows of this rank's vocabulary range; `gather_logits` joins the ranks'
    logits into the whole vocabulary."""

    def __init__(self, hidden_size: int, vocab_size: int, parallel: TensorParallel) -> None:
        rows, per_rank = vocab_range(vocab_size, parallel)
        super().__init__(hidden_size, per_rank, bias=False)
        self.checkpoint_cuts = {"weight": Cut(0, rows.start, rows.stop, vocab_size)}


def gather_logits(local: torch.Tensor, vocab_size: int, parallel: TensorParallel
                  ) -> torch.Tensor:
    """[S, vocab per rank] on each rank -> [S, vocab] (the padding rows cut off)."""
    if not parallel.is_split:
        return local
    return parallel.all_gather(local, dim=-1)[:, :vocab_size]


def make_row_parallel(cut: Cut, out_features: int, bias: bool,
                      quantization: QuantizationConfig | None, name: str,
                      parallel: TensorParallel) -> nn.Module:
    """The projection `name` with input features `cut` of its full input on this rank."""
    if not parallel.is_split:
        return make_linear(cut.full, out_features, bias, quantization, name)
    if quantization is not None:
        raise ValueError("quantized models do not run tensor-parallel yet; drop --tp-size or "
                         "--quantization")
    return RowParallelLinear(cut, out_features, bias, parallel)


def make_embedding(vocab_size: int, hidden_size: int, parallel: TensorParallel) -> nn.Module:
    if not parallel.is_split:
        return nn.Embedding(vocab_size, hidden_size)
    return VocabParallelEmbedding(vocab_size, hidden_size, parallel)


def make_lm_head(hidden_size: int, vocab_size: int, parallel: TensorParallel) -> nn.Module:
    if not parallel.is_split:
        return nn.Linear(hidden_size, vocab_size, bias=False)
    return VocabParallelLMHead(hidden_size, vocab_size, parallel)
