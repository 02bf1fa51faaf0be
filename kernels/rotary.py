"""Neox-style rotary embedding (HF Llama's rotate-half) of q and k, in place, in one launch.

HF casts the float32 cos/sin rows to the activation dtype and computes
`x1 * cos - x2 * sin` and `x2 * cos + x1 * sin` with every product and sum rounded to that
dtype; the kernel rounds at the same places, so bf16 results match the torch ops.

One program rotates every head of q and of k for one token: the token's cos/sin row is read
once and shared by all of them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rotate_heads(base_ptr, cos, sin, offs_d, mask_d, HEAD_STRIDE: tl.constexpr,
                  NUM_HEADS: tl.constexpr, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h < NUM_HEADS)[:, None] & mask_d[None, :]
    first = base_ptr + offs_h[:, None] * HEAD_STRIDE + offs_d[None, :]
    x1 = tl.load(first, mask=mask, other=0.0)
    x2 = tl.load(first + HALF, mask=mask, other=0.0)
    dtype = x1.dtype
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    c = cos.to(dtype).to(tl.float32)[None, :]
    s = sin.to(dtype).to(tl.float32)[None, :]
    out1 = (x1f * c).to(dtype).to(tl.float32) - (x2f * s).to(dtype).to(tl.float32)
    out2 = (x2f * c).to(dtype).to(tl.float32) + (x1f * s).to(dtype).to(tl.float32)
    tl.store(first, out1.to(dtype), mask=mask)
    tl.store(first + HALF, out2.to(dtype), mask=mask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, cos_ptr, sin_ptr, positions_ptr,
                   Q_TOKEN_STRIDE: tl.constexpr, Q_HEAD_STRIDE: tl.constexpr,
                   K_TOKEN_STRIDE: tl.constexpr, K_HEAD_STRIDE: tl.constexpr,
                   NUM_Q_HEADS: tl.constexpr, NUM_K_HEADS: tl.constexpr, HALF: tl.constexpr,
                   BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
                   HAS_POSITIONS: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    row = token
    if HAS_POSITIONS:
        row = tl.load(positions_ptr + token).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HALF
    cos = tl.load(cos_ptr + row * HALF + offs_d, mask=mask_d, other=0.0)
    sin = tl.load(sin_ptr + row * HALF + offs_d, mask=mask_d, other=0.0)
    _rotate_heads(q_ptr + token * Q_TOKEN_STRIDE, cos, sin, offs_d, mask_d,
                  Q_HEAD_STRIDE, NUM_Q_HEADS, HALF, BLOCK_HQ)
    _rotate_heads(k_ptr + token * K_TOKEN_STRIDE, cos, sin, offs_d, mask_d,
                  K_HEAD_STRIDE, NUM_K_HEADS, HALF, BLOCK_HK)


def apply_rotary_inplace(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                         sin: torch.Tensor, positions: torch.Tensor | None = None) -> None:
    """Rotates q [T, heads, D] and k [T, kv_heads, D] in place (same dtype; strided views
    allowed, each head's D values contiguous).

    cos and sin are float32 [rows, D // 2], contiguous: with `positions` ([T] integers) they are
    whole tables indexed by position; without, row t belongs to token t.
    """
    num_tokens, num_q_heads, head_dim = q.shape
    assert k.shape[0] == num_tokens and k.shape[2] == head_dim and k.dtype == q.dtype
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and head_dim % 2 == 0
    assert cos.is_contiguous() and sin.is_contiguous() and cos.shape[-1] == head_dim // 2
    if num_tokens == 0:
        return
    num_k_heads, half = k.shape[1], head_dim // 2
    _rotary_kernel[(num_tokens,)](
        q, k, cos, sin, positions if positions is not None else cos,
        Q_TOKEN_STRIDE=q.stride(0), Q_HEAD_STRIDE=q.stride(1),
        K_TOKEN_STRIDE=k.stride(0), K_HEAD_STRIDE=k.stride(1),
        NUM_Q_HEADS=num_q_heads, NUM_K_HEADS=num_k_heads, HALF=half,
        BLOCK_HQ=triton.next_power_of_2(num_q_heads),
        BLOCK_HK=triton.next_power_of_2(num_k_heads),
        BLOCK_D=triton.next_power_of_2(half), HAS_POSITIONS=positions is not None,
        num_warps=4)
