"""Random paged-attention batches, and the torch backend's answer for them in fp32.

A case scatters each sequence's pages at random over a pool filled with random K/V (padding
page 0 and unowned pages included, so reading anything outside a sequence shows up), then
asks for attention of random new tokens, extends first, then decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool

SPARE_PAGES = 5


@dataclass(frozen=True)
class Shape:
    num_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype
    sliding_window: int | None = None

    def spec(self) -> AttentionSpec:
        return AttentionSpec(layer_id=0, num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                             head_dim=self.head_dim, scaling=self.head_dim ** -0.5,
                             sliding_window=self.sliding_window)


@dataclass
class PagedCase:
    shape: Shape
    pool: KVPool
    batch: ForwardBatch
    q: torch.Tensor  # [T, heads, head_dim]
    k: torch.Tensor  # [T, kv_heads, head_dim]
    v: torch.Tensor

    def run(self, backend_class: type[AttentionBackend]) -> torch.Tensor:
        """The backend's output as [T, heads, head_dim]; it stores the new K/V into this pool."""
        return _attend(backend_class, self.pool, self.batch, self.q, self.k, self.v,
                       self.shape)

    def reference(self) -> torch.Tensor:
        """The torch backend's output, computed in fp32 from the same (rounded) values."""
        pool = clone_pool(self.pool, torch.float32)
        return _attend(TorchAttentionBackend, pool, self.batch, self.q.float(), self.k.float(),
                       self.v.float(), self.shape)


def make_case(shape: Shape, extends: list[tuple[int, int]], decode_lens: list[int],
              device: torch.device | str, seed: int = 0) -> PagedCase:
    """`extends` are (prefix_len, new_tokens) pairs; `decode_lens` are KV lengths after this
    pass (each decode adds one token)."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [prefix + new for prefix, new in extends] + decode_lens
    new_lens = [new for _, new in extends] + [1] * len(decode_lens)
    page_size = shape.page_size
    pages_per_seq = [-(-n // page_size) for n in seq_lens]
    num_pages = sum(pages_per_seq) + SPARE_PAGES
    pool = KVPool(num_pages, page_size, 1, shape.num_kv_heads, shape.head_dim, shape.dtype,
                  device)
    for buffer in (pool.k_buffers[0], pool.v_buffers[0]):
        buffer.copy_(torch.randn(buffer.shape, generator=gen))
    shuffled = (torch.randperm(num_pages, generator=gen) + 1).tolist()
    max_pages = max(pages_per_seq)
    page_rows, slots, starts = [], [], []
    for seq_len, new, count in zip(seq_lens, new_lens, pages_per_seq, strict=True):
        pages, shuffled = shuffled[:count], shuffled[count:]
        page_rows.append(pages + [0] * (max_pages - count))
        starts.append(len(slots))
        slots.extend(pages[p // page_size] * page_size + p % page_size
                     for p in range(seq_len - new, seq_len))
    num_tokens = len(slots)

    def randn(heads: int) -> torch.Tensor:
        return torch.randn(num_tokens, heads, shape.head_dim, generator=gen).to(device, shape.dtype)

    def on_device(values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    num_extends = len(extends)
    mode = (ForwardMode.DECODE if num_extends == 0 else
            ForwardMode.EXTEND if not decode_lens else ForwardMode.MIXED)
    positions = [p for n, new in zip(seq_lens, new_lens, strict=True) for p in range(n - new, n)]
    batch = ForwardBatch(
        mode=mode, input_ids=on_device([0] * num_tokens, torch.int64),
        positions=on_device(positions, torch.int64), out_cache_loc=on_device(slots, torch.int64),
        seq_lens=on_device(seq_lens, torch.int32), extend_lens=on_device(new_lens, torch.int32),
        extend_starts=on_device(starts, torch.int32), page_table=on_device(page_rows, torch.int32),
        logits_indices=on_device([num_tokens - 1], torch.int64), seq_lens_cpu=seq_lens,
        extend_lens_cpu=new_lens, num_extends=num_extends, attn_backend=None, kv_pool=pool)
    return PagedCase(shape, pool, batch, randn(shape.num_heads), randn(shape.num_kv_heads),
                     randn(shape.num_kv_heads))


def clone_pool(pool: KVPool, dtype: torch.dtype) -> KVPool:
    copy = KVPool(pool.num_pages, pool.page_size, pool.num_layers, pool.num_kv_heads,
                  pool.head_dim, dtype, pool.device)
    for source, target in zip(pool.k_buffers + pool.v_buffers, copy.k_buffers + copy.v_buffers,
                              strict=True):
        target.copy_(source)
    return copy


def _attend(backend_class: type[AttentionBackend], pool: KVPool, batch: ForwardBatch,
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: Shape) -> torch.Tensor:
    backend = backend_class(pool)
    batch.attn_backend, batch.kv_pool = backend, pool
    backend.prepare(batch)
    out = backend.forward(q, k, v, shape.spec(), batch)
    return out.view(q.shape)
