"""What the attention kernels share: log-domain constants, the tensor-core precision rule, and
the two steps of their inner loop (gathering a block of paged K/V, folding it into an online
softmax)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# The kernels work in base 2 (exp2 is one instruction): scores are scaled by log2(e) up front.
LOG2_E = 1.4426950408889634


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tf32 would drift from the torch reference); Triton
    ignores the setting for 16-bit inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def head_block(head_dim: int) -> int:
    """The head_dim tile: a power of two (Triton's rule) of at least 16 (tl.dot's)."""
    return max(16, 1 << (head_dim - 1).bit_length())


@triton.jit
def load_paged_kv(k_ptr, v_ptr, page_row, offs_n, mask_n, page_size, kv_head,
                  stride_kt, stride_kh, stride_vt, stride_vh, offs_d, mask_d):
    """Keys and values of positions `offs_n` of one kv head, gathered through the sequence's
    page-table row; masked positions read as zeros."""
    page = tl.load(page_row + offs_n // page_size, mask=mask_n, other=0)
    slot = page.to(tl.int64) * page_size + offs_n % page_size
    kv_mask = mask_n[:, None] & mask_d[None, :]
    k = tl.load(k_ptr + slot[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                mask=kv_mask, other=0.0)
    v = tl.load(v_ptr + slot[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def online_softmax_step(scores, v, m_i, l_i, acc, DOT_PRECISION: tl.constexpr):
    """Folds one block of base-2 scores and its values into the running row max `m_i`, row
    sum `l_i` and unnormalized output `acc`; returns the three updated."""
    m_new = tl.maximum(m_i, tl.max(scores, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(scores - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc
