"""The Triton attention backend: paged extend and decode kernels over the KV pool.

All per-step host work happens once in `prepare` (slicing the batch's device tensors into an
extend part and a decode part, choosing the decode split count); each layer then only
launches kernels (KV store, extend, decode and its split merge) and never waits on the GPU.

An FP8 cache: the kernels load K and V in the cache's dtype and convert them to the query's on
load (Triton's fp8 conversions, CUDA compute capability 8.9+); the per-tensor scales are folded
outside them, as softmax(q.(s_k k)) (s_v v) = softmax((s_k scale) q.k) v * s_v: the key scale
joins the softmax scale and the value scale multiplies the output.

Deterministic (--enable-deterministic-inference): decode runs unsplit, so a sequence's KV is
always walked in the same blocks from position 0 whatever the batch (the split count otherwise
follows the batch's occupancy). Extend programs already see a query's keys in blocks fixed
from position 0 and handle each query row on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixmesh.kernels.attention import (
    paged_decode_attention,
    paged_extend_attention,
    pick_num_splits,
)
from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec
from radixmesh.services.worker.forward_batch import ForwardBatch
from radixmesh.services.worker.kv_pool import KVPool


@dataclass(frozen=True, slots=True)
class TritonStepMetadata:
    """One forward pass's kernel inputs, shared by every layer.

    Extend sequences are rows [0, num_extends) of the batch and own query rows
    [0, num_extend_tokens); decodes follow, one query row each, in batch order.
    """

    num_extends: int
    num_extend_tokens: int
    max_extend_len: int
    extend_page_table: torch.Tensor   # [num_extends, max_pages] int32
    extend_seq_lens: torch.Tensor     # [num_extends] int32
    extend_lens: torch.Tensor         # [num_extends] int32
    extend_starts: torch.Tensor       # [num_extends] int32
    num_decodes: int
    decode_page_table: torch.Tensor   # [num_decodes, max_pages] int32
    decode_seq_lens: torch.Tensor     # [num_decodes] int32
    decode_splits: int


# A graph is captured once per batch size and replayed for any context length, so its split
# count must not depend on the lengths: it is chosen as if every sequence were this long.
GRAPH_SPLIT_LENGTH = 1 << 20


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    supports_cuda_graph = True

    supports_deterministic = True

    def __init__(self, kv_pool: KVPool, deterministic: bool = False) -> None:
        super().__init__(kv_pool, deterministic)
        device = kv_pool.device
        if kv_pool.is_fp8 and device.type == "cuda" and \
                torch.cuda.get_device_capability(device) < (8, 9):
            raise ValueError("the triton attention backend reads an FP8 KV cache on GPUs of "
                             "compute capability 8.9+ only; use --kv-cache-dtype auto")
        # The interpreter (TRITON_INTERPRET=1) runs these kernels on the CPU for development.
        self._num_sms = (torch.cuda.get_device_properties(device).multi_processor_count
                         if device.type == "cuda" else 1)
        self._meta: TritonStepMetadata | None = None

    def prepare(self, batch: ForwardBatch) -> None:
        n = batch.num_extends
        extend_lens = batch.extend_lens_cpu[:n]
        decode_lens = batch.seq_lens_cpu[n:]
        # Empty splits of short sequences cost one idle program each: the merge weighs them 0.
        longest = (GRAPH_SPLIT_LENGTH if batch.graph_batch_size is not None
                   else max(decode_lens, default=0))
        self._meta = TritonStepMetadata(
            num_extends=n,
            num_extend_tokens=sum(extend_lens),
            max_extend_len=max(extend_lens, default=0),
            extend_page_table=batch.page_table[:n],
            extend_seq_lens=batch.seq_lens[:n],
            extend_lens=batch.extend_lens[:n],
            extend_starts=batch.extend_starts[:n],
            num_decodes=len(decode_lens),
            decode_page_table=batch.page_table[n:],
            decode_seq_lens=batch.seq_lens[n:],
            decode_splits=(1 if self.deterministic else pick_num_splits(
                len(decode_lens), self.kv_pool.num_kv_heads, longest, self._num_sms)),
        )

    def init_cuda_graph_state(self, max_batch_size: int) -> None:
        """Nothing to allocate: the kernels read the graph runner's static batch tensors, and
        their scratch (split partials) comes from the graph's memory pool."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                batch: ForwardBatch) -> torch.Tensor:
        meta = self._meta
        assert meta is not None, "prepare(batch) must run before the first layer"
        pool, layer = self.kv_pool, spec.layer_id
        keys, values = pool.keys(layer), pool.values(layer)
        pool.store(layer, batch.out_cache_loc, k, v)
        scaling = spec.scaling * pool.k_scales[layer]
        if q.stride(2) != 1:
            q = q.contiguous()
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        page_size = self.kv_pool.page_size
        if meta.num_extends:
            paged_extend_attention(
                q, keys, values, out, meta.extend_page_table, meta.extend_seq_lens,
                meta.extend_lens, meta.extend_starts, meta.max_extend_len, page_size,
                scaling, spec.sliding_window)
        if meta.num_decodes:
            first = meta.num_extend_tokens
            paged_decode_attention(
                q[first:], keys, values, out[first:], meta.decode_page_table,
                meta.decode_seq_lens, page_size, scaling, spec.sliding_window,
                meta.decode_splits)
        if pool.v_scales[layer] != 1.0:
            out.mul_(pool.v_scales[layer])
        return out.view(q.shape[0], -1)
