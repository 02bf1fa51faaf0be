"""Writes the new tokens' K and V into the paged KV cache, both in one launch.

torch's `cache[slots] = k` costs two indexing kernels (K, V) plus a dtype cast each, and the
advanced-indexing path is heavy on the host; this is one kernel per layer. One program copies
one token's row of `kv_heads * head_dim` values for K and for V.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 2048


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slots_ptr,
                     stride_k, stride_v, stride_kc, stride_vc, row_size,
                     BLOCK: tl.constexpr):
    token = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_size
    slot = tl.load(slots_ptr + token).to(tl.int64)
    row = token.to(tl.int64)
    k = tl.load(k_ptr + row * stride_k + offs, mask=mask)
    v = tl.load(v_ptr + row * stride_v + offs, mask=mask)
    tl.store(k_cache_ptr + slot * stride_kc + offs, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + slot * stride_vc + offs, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
             k: torch.Tensor, v: torch.Tensor) -> None:
    """k_cache[slots] = k and v_cache[slots] = v, cast to the cache dtype.

    Caches are [num_slots, kv_heads, head_dim] contiguous; k and v are [T, kv_heads, head_dim]
    with each token's row contiguous (views into a fused QKV projection qualify); slots is [T]
    of distinct slots on the same device.
    """
    num_tokens = slots.shape[0]
    if num_tokens == 0:
        return
    k, v = _rows_contiguous(k), _rows_contiguous(v)
    row_size = k_cache.shape[1] * k_cache.shape[2]
    block = min(triton.next_power_of_2(row_size), MAX_BLOCK)
    grid = (num_tokens, triton.cdiv(row_size, block))
    _store_kv_kernel[grid](k, v, k_cache, v_cache, slots, k.stride(0), v.stride(0),
                           k_cache.stride(0), v_cache.stride(0), row_size, BLOCK=block,
                           num_warps=4)


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when each token's [kv_heads, head_dim] row is dense, else a dense copy."""
    if x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return x
    return x.contiguous()
