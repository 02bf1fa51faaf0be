"""One forward pass's inputs, built by the model runner from a step plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from radixmesh.services.worker.attention.base import AttentionBackend
    from radixmesh.services.worker.kv_pool import KVPool
    from radixmesh.services.worker.prefix_groups import PrefixGroups


def no_layer_wait(layer_id: int) -> None:
    """Nothing is being loaded into the KV cache for this pass."""


class ForwardMode(Enum):
    EXTEND = "extend"  # only extends (prefill chunks, possibly over a cached prefix)
    DECODE = "decode"  # only decodes: one new token per sequence
    MIXED = "mixed"    # extends then decodes in one pass

    @classmethod
    def of(cls, num_extends: int, num_decodes: int) -> ForwardMode:
        """The mode of a pass over `num_extends` extends then `num_decodes` decodes."""
        return cls.DECODE if num_extends == 0 else cls.EXTEND if num_decodes == 0 else cls.MIXED


@dataclass(slots=True)
class ForwardBatch:
    """A flat batch of new tokens from `batch_size` sequences.

    Sequences are ordered extends first (`num_extends` of them), then decodes. Sequence `i` owns
    the contiguous token range `[extend_starts[i], extend_starts[i] + extend_lens[i])` of the flat
    tensors; its new tokens sit at positions `seq_lens[i] - extend_lens[i]` .. `seq_lens[i] - 1`,
    and its KV (old and new) lives in pages `page_table[i, : ceil(seq_lens[i] / page_size)]`.
    """

    mode: ForwardMode
    input_ids: torch.Tensor       # [T] int64
    positions: torch.Tensor       # [T] int64
    out_cache_loc: torch.Tensor   # [T] int64: the KV slot each new token is written to
    seq_lens: torch.Tensor        # [B] int32: KV length after this pass
    extend_lens: torch.Tensor     # [B] int32: new tokens per sequence (1 for a decode)
    extend_starts: torch.Tensor   # [B] int32: offset of each sequence's first token in [T]
    page_table: torch.Tensor      # [B, max_pages] int32, padded with page 0
    logits_indices: torch.Tensor  # [S] int64: the tokens whose next-token logits are needed
    seq_lens_cpu: list[int]
    extend_lens_cpu: list[int]
    num_extends: int
    attn_backend: AttentionBackend
    kv_pool: KVPool
    # Set when this pass is captured into or replayed from a CUDA graph: the padded batch size,
    # rows past the real batch being padding (see AttentionBackend's invariants);
    # seq_lens_cpu and extend_lens_cpu then cover the padding rows too.
    graph_batch_size: int | None = None
    # Called by each layer's attention before it reads the KV cache: waits until that layer's
    # pages loaded from the host pool this step have landed (see host_kv.py).
    wait_for_layer: Callable[[int], None] = no_layer_wait
    # Decode rows that share leading pages (prefix_groups.py), for a backend that reads a
    # shared prefix once per group; set only on eager decode batches.
    prefix_groups: PrefixGroups | None = None

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
