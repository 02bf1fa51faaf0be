"""Which part of each full tensor a rank holds: ranges of heads, columns and vocabulary rows.

All ranges are in units of the full (unsplit) tensor, so a checkpoint tensor of HF's shape is
cut with them directly. Each function raises ValueError for a model the group cannot split.
"""

from __future__ import annotations

from radixmesh.services.worker.parallel.tensor_parallel import TensorParallel


def even_range(total: int, parallel: TensorParallel, what: str) -> range:
    """The rank's equal share of `total` items (which the group size must divide)."""
    if total % parallel.size:
        raise ValueError(f"{what} ({total}) do not divide among {parallel.size} tensor-parallel "
                         "ranks")
    share = total // parallel.size
    return range(parallel.rank * share, (parallel.rank + 1) * share)


def kv_head_range(num_kv_heads: int, parallel: TensorParallel) -> range:
    """The KV heads a rank holds: an equal share, or, with fewer KV heads than ranks, the one
    head its query heads read (each KV head then lives on size / num_kv_heads ranks)."""
    if num_kv_heads >= parallel.size:
        return even_range(num_kv_heads, parallel, "KV heads")
    if parallel.size % num_kv_heads:
        raise ValueError(f"{num_kv_heads} KV heads cannot be replicated evenly over "
                         f"{parallel.size} tensor-parallel ranks")
    head = parallel.rank * num_kv_heads // parallel.size
    return range(head, head + 1)


def vocab_range(vocab_size: int, parallel: TensorParallel) -> tuple[range, int]:
    """(the vocabulary rows the rank holds, rows per rank). Every rank holds the same number
    of rows so that the logits gather evenly; the last rank's rows past the vocabulary are
    padding (zero weights, logits cut off after the gather)."""
    per_rank = -(-vocab_size // parallel.size)
    start = min(parallel.rank * per_rank, vocab_size)
    return range(start, min(start + per_rank, vocab_size)), per_rank
