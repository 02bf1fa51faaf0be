"""The reference attention backend: plain torch SDPA over KV gathered from the paged cache.

It runs anywhere torch runs and is the yardstick the Triton and FlashInfer backends are tested
against. Extends are attended one sequence at a time (prefill is compute-bound, so the loop
costs little); decodes are attended in one padded batch, since many short sequences is where
a Python loop would dominate. An FP8 cache is dequantized as it is gathered.

With `deterministic` (--enable-deterministic-inference) both go through
`invariant_attention`: fixed-shape query blocks and a fixed KV split size, so a query's output
does not depend on its batch, its chunk or its cached prefix (see that module).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec
from radixmesh.services.worker.attention.invariant_attention import (
    QueryBlocks,
    build_query_blocks,
    invariant_attention,
)
from radixmesh.services.worker.forward_batch import ForwardBatch


class TorchAttentionBackend(AttentionBackend):
    name = "torch"
    supports_deterministic = True

    def prepare(self, batch: ForwardBatch) -> None:
        page_size = self.kv_pool.page_size
        if self.deterministic:
            self._blocks: QueryBlocks = build_query_blocks(batch, page_size)
            return
        max_len = max(batch.seq_lens_cpu, default=0)
        positions = torch.arange(max_len, device=batch.page_table.device)
        pages = batch.page_table[:, positions // page_size].long()
        # [B, max_len] KV slot of every position of every sequence; beyond seq_len it points into
        # padding page 0 or stale slots, which the masks below exclude.
        self._kv_slots = pages * page_size + positions % page_size
        self._positions = positions
        self._extend_offsets = batch.extend_starts.tolist()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                batch: ForwardBatch) -> torch.Tensor:
        self.kv_pool.store(spec.layer_id, batch.out_cache_loc, k, v)
        if self.deterministic:
            return invariant_attention(q, self.kv_pool, spec, self._blocks).view(q.shape[0], -1)
        out = torch.empty_like(q)
        if batch.num_extends:
            self._attend_extends(q, spec, batch, out)
        if batch.num_extends < batch.batch_size:
            self._attend_decodes(q, spec, batch, out)
        return out.view(q.shape[0], -1)

    def _attend_extends(self, q: torch.Tensor, spec: AttentionSpec, batch: ForwardBatch,
                        out: torch.Tensor) -> None:
        pool, layer = self.kv_pool, spec.layer_id
        for i in range(batch.num_extends):
            seq_len, new = batch.seq_lens_cpu[i], batch.extend_lens_cpu[i]
            start = self._extend_offsets[i]
            slots = self._kv_slots[i, :seq_len]
            query_pos = self._positions[seq_len - new:seq_len]
            mask = _visibility(query_pos[:, None], self._positions[None, :seq_len], spec)
            attended = F.scaled_dot_product_attention(
                q[start:start + new].transpose(0, 1).unsqueeze(0),
                pool.read_keys(layer, slots, q.dtype).transpose(0, 1).unsqueeze(0),
                pool.read_values(layer, slots, q.dtype).transpose(0, 1).unsqueeze(0),
                attn_mask=mask, scale=spec.scaling, enable_gqa=True)
            out[start:start + new] = attended.squeeze(0).transpose(0, 1)

    def _attend_decodes(self, q: torch.Tensor, spec: AttentionSpec, batch: ForwardBatch,
                        out: torch.Tensor) -> None:
        first = batch.num_extends
        start = self._extend_offsets[first]
        seq_lens = batch.seq_lens[first:].long()
        slots = self._kv_slots[first:]
        keys = self.kv_pool.read_keys(spec.layer_id, slots, q.dtype)    # [B, S, kv_heads, D]
        values = self.kv_pool.read_values(spec.layer_id, slots, q.dtype)
        query_pos = (seq_lens - 1)[:, None, None, None]                  # [B, 1, 1, 1]
        mask = _visibility(query_pos, self._positions[None, None, None, :], spec)
        mask = mask & (self._positions < seq_lens[:, None])[:, None, None, :]
        attended = F.scaled_dot_product_attention(
            q[start:].unsqueeze(2), keys.transpose(1, 2), values.transpose(1, 2),
            attn_mask=mask, scale=spec.scaling, enable_gqa=True)        # [B, H, 1, D]
        out[start:] = attended.squeeze(2)


def _visibility(query_pos: torch.Tensor, key_pos: torch.Tensor,
                spec: AttentionSpec) -> torch.Tensor:
    """True where a query may attend a key: causal, and inside the sliding window if any."""
    visible = key_pos <= query_pos
    if spec.sliding_window is not None:
        visible = visible & (key_pos > query_pos - spec.sliding_window)
    return visible
