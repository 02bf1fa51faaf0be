"""Paged extend attention: a chunk of new tokens per sequence over its cached prefix.

The new tokens' K and V are already in the paged cache (the backend stores them first), so one
loop covers prefix and new tokens alike: the query at position p sees positions [0, p], or
(p - sliding_window, p] for a sliding-window layer. One program handles BLOCK_M queries of one
head of one sequence; it walks only the key blocks some of its queries can see.
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

# Finite stand-in for -inf: a row that sees nothing in a block keeps finite sums, which the
# first visible key then wipes out (its weight exp2(MASKED - real max) is 0).
MASKED = tl.constexpr(-1.0e30)  # a global a kernel reads must be a constexpr


@triton.jit
def _extend_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, page_table_ptr, seq_lens_ptr, extend_lens_ptr, extend_starts_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_pt, scale_log2, page_size, sliding_window, head_dim, group,
    HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0)
    q_block = tl.program_id(1)
    head = tl.program_id(2)
    kv_head = head // group
    extend_len = tl.load(extend_lens_ptr + seq)
    if q_block * BLOCK_M >= extend_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    first_token = tl.load(extend_starts_ptr + seq).to(tl.int64)
    prefix_len = seq_len - extend_len

    offs_m = q_block * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < extend_len
    query_pos = prefix_len + offs_m
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < head_dim
    rows = first_token + offs_m
    q = tl.load(q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    hi = tl.minimum(prefix_len + (q_block + 1) * BLOCK_M, seq_len)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(prefix_len + q_block * BLOCK_M - sliding_window + 1, 0)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    page_row = page_table_ptr + seq.to(tl.int64) * stride_pt
    for block_start in range(lo, hi, BLOCK_N):
        offs_n = block_start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < hi
        k, v = load_paged_kv(k_ptr, v_ptr, page_row, offs_n, mask_n, page_size, kv_head,
                             stride_kt, stride_kh, stride_vt, stride_vh, offs_d, mask_d)
        k, v = k.to(q.dtype), v.to(q.dtype)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
        visible = mask_n[None, :] & (offs_n[None, :] <= query_pos[:, None])
        if HAS_WINDOW:
            visible = visible & (offs_n[None, :] > query_pos[:, None] - sliding_window)
        scores = tl.where(visible, scores, MASKED)
        m_i, l_i, acc = online_softmax_step(scores, v, m_i, l_i, acc, DOT_PRECISION)

    acc = acc / l_i[:, None]
    tl.store(out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def paged_extend_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           out: torch.Tensor, page_table: torch.Tensor, seq_lens: torch.Tensor,
                           extend_lens: torch.Tensor, extend_starts: torch.Tensor,
                           max_extend_len: int, page_size: int, scale: float,
                           sliding_window: int | None = None) -> torch.Tensor:
    """Writes into `out` the attention of the extend tokens of `q` ([T, heads, head_dim]).

    Sequence i (of the B rows of `page_table`, `seq_lens`, `extend_lens`, `extend_starts`, all
    int32 on q's device) owns rows [extend_starts[i], extend_starts[i] + extend_lens[i]) of q
    and out, at positions seq_lens[i] - extend_lens[i] ..  seq_lens[i] - 1; its K and V for all
    positions, new ones included, are already in the caches. Rows of q that belong to no
    sequence are left untouched in out. `max_extend_len` (a host int) only sizes the grid.
    """
    num_seqs = page_table.shape[0]
    _, num_heads, head_dim = q.shape
    if num_seqs == 0 or max_extend_len == 0:
        return out
    group = num_heads // k_cache.shape[1]
    block = 32 if q.element_size() == 4 else 64
    grid = (num_seqs, triton.cdiv(max_extend_len, block), num_heads)
    _extend_kernel[grid](
        q, k_cache, v_cache, out, page_table, seq_lens, extend_lens, extend_starts,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1), page_table.stride(0),
        scale * LOG2_E, page_size, sliding_window or 0, head_dim, group,
        HAS_WINDOW=sliding_window is not None, BLOCK_M=block, BLOCK_N=block,
        BLOCK_D=head_block(head_dim), DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2)
    return out
