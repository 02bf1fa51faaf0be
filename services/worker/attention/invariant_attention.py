"""Batch-invariant paged attention in torch ops, for `--enable-deterministic-inference`.

The torch backend's usual path is not batch-invariant: decodes are attended in one batch padded
to the longest sequence (the padded length changes the SDPA kernel's blocking), and an extend's
query count (its chunk) changes the products' shapes. Here every product has one fixed shape:

- Queries are cut into blocks of Q_BLOCK positions aligned to absolute positions (block b holds
  positions [b * Q_BLOCK, (b + 1) * Q_BLOCK) of one sequence; rows of positions outside this
  pass's new tokens are zero padding). A query therefore sits at the same row of the same-shaped
  block whether it comes in a full prefill, a chunk, after a cached prefix or as a decode, and
  decodes and extends take the same path.
- KV is cut into splits of KV_SPLIT positions from position 0 (a fixed split size, never one
  chosen from the batch). Each split is one [Q_BLOCK * group, head_dim] x [head_dim, KV_SPLIT]
  product per KV head, masked (causal, window), then merged into a running (max, sum, output)
  state in split order: the flash-decoding merge, with a fixed order.
- A split a query cannot see at all changes its state by nothing, bit for bit (its weight is
  exp(-inf) = 0 and the old state is scaled by exp(0) = 1), so which other queries share a block
  and how many splits the block walks never touch a row's result.

Everything runs in float32 and is cast to the query dtype at the end. The cost is the padding of
a decode to a block of Q_BLOCK rows: this path is for determinism, not speed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixmesh.services.worker.attention.base import AttentionSpec
from radixmesh.services.worker.forward_batch import ForwardBatch
from radixmesh.services.worker.kv_pool import KVPool

Q_BLOCK = 16
KV_SPLIT = 64  # a multiple of 16: SIMD loops over a split's row have no scalar tail


@dataclass(frozen=True, slots=True)
class QueryBlocks:
    """One pass's query blocks, longest KV first, so the blocks a split reaches are a prefix.

    rows: [NB * Q_BLOCK] query row of each block row in the pass's [T] tokens (T: padding);
    positions: [NB, Q_BLOCK] absolute position of each row (-1: padding);
    kv_slots: [NB, max_splits * KV_SPLIT] KV slot of each position of the block's sequence
    (slot 0 past its length: masked, since no query sees beyond itself);
    blocks_per_split: how many leading blocks reach split j.
    """

    rows: torch.Tensor
    positions: torch.Tensor
    kv_slots: torch.Tensor
    blocks_per_split: list[int]

    @property
    def num_blocks(self) -> int:
        return int(self.positions.shape[0])


def build_query_blocks(batch: ForwardBatch, page_size: int) -> QueryBlocks:
    """Host-side bookkeeping once per pass; every layer reuses it."""
    starts = batch.extend_starts.tolist()
    blocks: list[tuple[int, int, int, int, int]] = []  # (kv_end, seq, block, first, row0)
    for seq, (seq_len, new) in enumerate(zip(batch.seq_lens_cpu, batch.extend_lens_cpu,
                                             strict=True)):
        first = seq_len - new  # position of the first new token
        for block in range(first // Q_BLOCK, (seq_len - 1) // Q_BLOCK + 1):
            kv_end = min((block + 1) * Q_BLOCK, seq_len)
            blocks.append((kv_end, seq, block, first, starts[seq]))
    blocks.sort(key=lambda entry: -entry[0])
    num_tokens = batch.num_tokens
    rows: list[int] = []
    positions: list[int] = []
    for _, seq, block, first, row0 in blocks:
        seq_len = batch.seq_lens_cpu[seq]
        for pos in range(block * Q_BLOCK, (block + 1) * Q_BLOCK):
            new = first <= pos < seq_len
            rows.append(row0 + pos - first if new else num_tokens)
            positions.append(pos if new else -1)
    splits = [-(-kv_end // KV_SPLIT) for kv_end, *_ in blocks]
    max_splits = splits[0]
    device = batch.page_table.device
    seqs = torch.tensor([seq for _, seq, *_ in blocks], dtype=torch.int64, device=device)
    kv_pos = torch.arange(max_splits * KV_SPLIT, device=device)
    pages = batch.page_table.long()[seqs[:, None],
                                    (kv_pos // page_size).clamp(max=batch.page_table.shape[1] - 1)]
    slots = pages * page_size + kv_pos % page_size
    slots = torch.where(kv_pos < batch.seq_lens.long()[seqs][:, None], slots, 0)
    return QueryBlocks(
        rows=torch.tensor(rows, dtype=torch.int64, device=device),
        positions=torch.tensor(positions, dtype=torch.int64, device=device).view(-1, Q_BLOCK),
        kv_slots=slots,
        blocks_per_split=[sum(1 for n in splits if n > j) for j in range(max_splits)])


def invariant_attention(q: torch.Tensor, kv_pool: KVPool, spec: AttentionSpec,
                        blocks: QueryBlocks) -> torch.Tensor:
    """Attention of q ([T, heads, head_dim]) over the cached KV of `spec.layer_id`, [T, heads,
    head_dim] in q's dtype; each row bitwise independent of the batch around it."""
    num_tokens, num_heads, head_dim = q.shape
    kv_heads = spec.num_kv_heads
    group = num_heads // kv_heads
    nb = blocks.num_blocks
    width = Q_BLOCK * group  # rows of one product: (position, query head of the group)
    padded = torch.cat((q.float() * spec.scaling, q.new_zeros((1, num_heads, head_dim),
                                                              dtype=torch.float32)))
    queries = (padded[blocks.rows].view(nb, Q_BLOCK, kv_heads, group, head_dim)
               .permute(0, 2, 1, 3, 4).reshape(nb, kv_heads, width, head_dim))
    # [NB, 1, width] query position of each product row.
    query_pos = blocks.positions[:, :, None].expand(nb, Q_BLOCK, group).reshape(nb, 1, width)
    running_max = q.new_full((nb, kv_heads, width), float("-inf"), dtype=torch.float32)
    running_sum = q.new_zeros((nb, kv_heads, width), dtype=torch.float32)
    acc = q.new_zeros((nb, kv_heads, width, head_dim), dtype=torch.float32)
    for split, n in enumerate(blocks.blocks_per_split):
        lo = split * KV_SPLIT
        slots = blocks.kv_slots[:n, lo:lo + KV_SPLIT]
        keys = kv_pool.read_keys(spec.layer_id, slots, torch.float32).permute(0, 2, 3, 1)
        values = kv_pool.read_values(spec.layer_id, slots, torch.float32).transpose(1, 2)
        scores = torch.matmul(queries[:n], keys.contiguous())           # [n, kv, width, S]
        key_pos = torch.arange(lo, lo + KV_SPLIT, device=q.device)
        visible = key_pos <= query_pos[:n, :, :, None]
        if spec.sliding_window is not None:
            visible &= key_pos > query_pos[:n, :, :, None] - spec.sliding_window
        scores = scores.masked_fill(~visible, float("-inf"))
        new_max = torch.maximum(running_max[:n], scores.amax(dim=-1))
        # A row that has seen nothing yet keeps max -inf: shift by 0 so that exp gives 0, not nan.
        shift = torch.where(new_max == float("-inf"), 0.0, new_max)
        weights = torch.exp(scores - shift[..., None])
        rescale = torch.exp(running_max[:n] - shift)
        running_sum[:n] = running_sum[:n] * rescale + weights.sum(dim=-1)
        acc[:n] = acc[:n] * rescale[..., None] + torch.matmul(weights, values.contiguous())
        running_max[:n] = new_max
    out = acc / torch.where(running_sum > 0, running_sum, 1.0)[..., None]
    out = (out.view(nb, kv_heads, Q_BLOCK, group, head_dim).permute(0, 2, 1, 3, 4)
           .reshape(nb * Q_BLOCK, num_heads, head_dim))
    result = q.new_empty((num_tokens + 1, num_heads, head_dim))
    result[blocks.rows] = out.to(q.dtype)  # padding rows all land on row T, dropped below
    return result[:num_tokens]
