"""Paged decode attention: one query token per sequence against its whole KV history.

Layout: the KV cache is `[num_slots, kv_heads, head_dim]`; position `p` of sequence `b` lives at
slot `page_table[b, p // page_size] * page_size + p % page_size`.

One program handles one (sequence, kv head, split): all the query heads that share that kv head
are the rows of one small matrix, so each K/V block is read from memory once per group and fed
to the tensor cores (GQA for free; MHA pads the group to the 16 rows `tl.dot` needs, harmless
since decode is bound by memory, not arithmetic). Long contexts are split over `num_splits`
programs (split-K, "flash decoding") so that a small batch still fills the GPU; each split
writes a partial output and its log-sum-exp, and a second kernel merges them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from radixmesh.kernels.attention.common import (
    LOG2_E,
    dot_precision,
    head_block,
    load_paged_kv,
    online_softmax_step,
)

# A split shorter than this costs more in merging than it gains in parallelism.
MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 16


def pick_num_splits(num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """Enough splits to give every multiprocessor about two programs, none shorter than
    MIN_TOKENS_PER_SPLIT tokens."""
    by_length = triton.cdiv(max(max_seq_len, 1), MIN_TOKENS_PER_SPLIT)
    by_occupancy = triton.cdiv(2 * num_sms, max(num_seqs * num_kv_heads, 1))
    return max(1, min(by_length, by_occupancy, MAX_SPLITS))


@triton.jit
def _decode_split_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, page_table_ptr, seq_lens_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_ot, stride_oh, stride_os, stride_lt, stride_lh, stride_pt,
    scale_log2, page_size, sliding_window, head_dim, group,
    NUM_SPLITS: tl.constexpr, HAS_WINDOW: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(seq_len - sliding_window, 0)
    # Splits start on block boundaries so that no block is shared by two splits.
    chunk = tl.cdiv(tl.cdiv(seq_len - lo, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = lo + split * chunk
    end = tl.minimum(start + chunk, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    heads = kv_head * group + offs_h
    mask_h = offs_h < group
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    q = tl.load(q_ptr + seq.to(tl.int64) * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    page_row = page_table_ptr + seq.to(tl.int64) * stride_pt
    for block_start in range(start, end, BLOCK_N):
        offs_n = block_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        k, v = load_paged_kv(k_ptr, v_ptr, page_row, offs_n, mask_n, page_size, kv_head,
                             stride_kt, stride_kh, stride_vt, stride_vh, offs_d, mask_d)
        k, v = k.to(q.dtype), v.to(q.dtype)
        # Every block holds at least one visible key, so each row's max is finite.
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        scores = tl.where(mask_n[None, :], scores, float("-inf"))
        m_i, l_i, acc = online_softmax_step(scores, v, m_i, l_i, acc, DOT_PRECISION)

    # A split past the end of a short sequence saw nothing: weight zero in the merge.
    has_keys = l_i > 0
    acc = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_offsets = (seq.to(tl.int64) * stride_ot + heads[:, None] * stride_oh + split * stride_os
                   + offs_d[None, :])
    tl.store(out_ptr + out_offsets, acc.to(out_ptr.dtype.element_ty),
             mask=mask_h[:, None] & mask_d[None, :])
    if NUM_SPLITS > 1:
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + seq * stride_lt + heads * stride_lh + split, lse, mask=mask_h)


@triton.jit
def _decode_merge_kernel(
    partial_ptr, lse_ptr, out_ptr,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh, head_dim,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    lse = tl.load(lse_ptr + seq * stride_lt + head * stride_lh + offs_s, mask=mask_s,
                  other=float("-inf"))
    weights = tl.exp2(lse - tl.max(lse, 0))  # split 0 always has keys: the max is finite
    weights = weights / tl.sum(weights, 0)
    partial = tl.load(partial_ptr + seq.to(tl.int64) * stride_pt + head * stride_ph
                      + offs_s[:, None] * stride_ps + offs_d[None, :],
                      mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    merged = tl.sum(partial * weights[:, None], 0)
    tl.store(out_ptr + seq.to(tl.int64) * stride_ot + head * stride_oh + offs_d,
             merged.to(out_ptr.dtype.element_ty), mask=mask_d)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           out: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor,
                           page_size: int, scale: float, sliding_window: int | None = None,
                           num_splits: int = 1) -> torch.Tensor:
    """Writes into `out` ([N, heads, head_dim]) the attention of `q` ([N, heads, head_dim], one
    token per sequence, at position seq_lens[i] - 1) over each sequence's cached KV.

    `page_table` is [N, max_pages] int32 and `seq_lens` [N] int32, both on q's device; the
    caches are [num_slots, kv_heads, head_dim] with unit stride on the last axis (q and out too).
    No host synchronisation: safe to call once per layer.
    """
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    group = num_heads // num_kv_heads
    if num_seqs == 0:
        return out
    block_d = head_block(head_dim)
    block_n = 32 if q.element_size() == 4 else 64
    meta = dict(HAS_WINDOW=sliding_window is not None,
                BLOCK_H=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_D=block_d,
                DOT_PRECISION=dot_precision(q.dtype), num_warps=4, num_stages=2)
    args = (page_table, seq_lens, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
            v_cache.stride(0), v_cache.stride(1))
    tail = (page_table.stride(0), scale * LOG2_E, page_size, sliding_window or 0, head_dim, group)
    grid = (num_seqs, num_kv_heads, num_splits)
    if num_splits == 1:
        _decode_split_kernel[grid](q, k_cache, v_cache, out, out, *args,
                                   out.stride(0), out.stride(1), 0, 0, 0, *tail,
                                   NUM_SPLITS=1, **meta)
        return out
    partial = torch.empty((num_seqs, num_heads, num_splits, head_dim), dtype=torch.float32,
                          device=q.device)
    lse = torch.empty((num_seqs, num_heads, num_splits), dtype=torch.float32, device=q.device)
    _decode_split_kernel[grid](q, k_cache, v_cache, partial, lse, *args,
                               partial.stride(0), partial.stride(1), partial.stride(2),
                               lse.stride(0), lse.stride(1), *tail,
                               NUM_SPLITS=num_splits, **meta)
    _decode_merge_kernel[(num_seqs, num_heads)](
        partial, lse, out, partial.stride(0), partial.stride(1), partial.stride(2),
        lse.stride(0), lse.stride(1), out.stride(0), out.stride(1), head_dim,
        NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), BLOCK_D=block_d,
        num_warps=4)
    return out

