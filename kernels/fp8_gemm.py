"""FP8 GEMM for a few tokens: x_q [M, K] times w_q [N, K].T, both e4m3 with row-wise scales.

At decode sizes (M of 1 to 16) the GEMM only streams the weight, and cuBLASLt's FP8 kernels
behind `torch._scaled_mm` leave much of the H100's bandwidth unused there: 19 us for the 8B
shape's qkv projection (25 MB of FP8 weight, 8 us at 3 TB/s), slower than bf16 on o_proj and
down_proj (`load-tests/results/fp8-gemm-*`). Here each program owns BLOCK_N output columns and
one of SPLIT_K slices of K, so that even a 4,096-column projection spreads over a few hundred
programs; with one slice the program scales and rounds its sums itself, with several their
float32 partial sums go to a workspace that a second launch adds up, scales
(x_scale[m] * w_scale[n], as `_scaled_mm`'s epilogue) and rounds. The products and their float32
accumulation are `_scaled_mm`'s; only the order of the sum differs.

A weight-only form (bf16 activations against codes widened in registers, no quantization
launch) was measured slower on an H100 than quantizing first and multiplying e4m3 codes, at
every shape and at 1 and 16 tokens (fp8-gemm-nvidia-h100-80gb-hbm3-20261208-0025.json).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

MAX_ROWS = 16  # the one row block a program computes (tensor-core dots need 16)
SMALL_M_KERNEL = "fp8-small-m"  # its name in kernels/configs/ (tuned_configs.py)


@dataclass(frozen=True)
class SmallMConfig:
    """One tiling: BLOCK_N columns per program, K read BLOCK_K at a time, cut in SPLIT_K."""

    block_n: int = 64
    block_k: int = 256
    split_k: int = 4
    num_warps: int = 4
    num_stages: int = 4


@triton.jit
def _partial_sums_kernel(x_ptr, w_ptr, x_scale_ptr, w_scale_ptr, partial_ptr, out_ptr,
                         M, N, K, stride_x, stride_w, stride_out,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_per_split = K // SPLIT_K  # the launcher checks K % (SPLIT_K * BLOCK_K) == 0
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_x
    w_cols = w_ptr + offs_n[None, :].to(tl.int64) * stride_w
    m_mask = offs_m[:, None] < M
    n_mask = offs_n[None, :] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(pid_k * k_per_split, (pid_k + 1) * k_per_split, BLOCK_K):
        x = tl.load(x_rows + (k + offs_k)[None, :], mask=m_mask, other=0.0)
        w = tl.load(w_cols + (k + offs_k)[:, None], mask=n_mask, other=0.0)
        acc = tl.dot(x, w, acc)
    mask = m_mask & n_mask
    if SPLIT_K == 1:  # the whole sum is here: scale and round it in this launch
        scale = (tl.load(x_scale_ptr + offs_m, mask=offs_m < M, other=0.0)[:, None]
                 * tl.load(w_scale_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :])
        out = out_ptr + offs_m[:, None] * stride_out + offs_n[None, :]
        tl.store(out, (acc * scale).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(partial_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :], acc,
                 mask=mask)


@triton.jit
def _scale_sum_kernel(partial_ptr, x_scale_ptr, w_scale_ptr, out_ptr, M, N, stride_out,
                      SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        total += tl.load(partial_ptr + split * M * N + m * N + offs, mask=mask, other=0.0)
    scale = tl.load(x_scale_ptr + m) * tl.load(w_scale_ptr + offs, mask=mask, other=0.0)
    tl.store(out_ptr + m * stride_out + offs, (total * scale).to(out_ptr.dtype.element_ty),
             mask=mask)


def small_m_config(n: int, k: int, num_sms: int) -> SmallMConfig:
    """The tiling for an [N, K] weight: 64-column blocks, K cut into as few slices as give at
    least two programs per SM (the weight streams from every SM at once), each slice whole
    256-element blocks."""
    tiling = SmallMConfig()
    columns = triton.cdiv(n, tiling.block_n)
    split = 1
    while columns * split < 2 * num_sms and k % (2 * split * tiling.block_k) == 0 and split < 8:
        split *= 2
    return replace(tiling, split_k=split)


def fits_small_m(m: int, n: int, k: int, config: SmallMConfig) -> bool:
    """Whether this kernel takes the shape: few rows, K cut evenly into whole blocks."""
    return 0 < m <= MAX_ROWS and k % (config.split_k * config.block_k) == 0 and n > 0


def fp8_gemm_small_m(x_q: torch.Tensor, x_scale: torch.Tensor, w_q: torch.Tensor,
                     w_scale: torch.Tensor, config: SmallMConfig = SmallMConfig(),
                     out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """(x_q * x_scale[:, None]) @ (w_q * w_scale[:, None]).T in `out_dtype`, for M <= 16.

    x_q [M, K] and w_q [N, K] in e4m3 with contiguous rows; x_scale [M] and w_scale [N] in
    float32. The caller checks `fits_small_m` first."""
    m, k = x_q.shape
    n = w_q.shape[0]
    assert fits_small_m(m, n, k, config), (m, n, k, config)
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    partial = (out if config.split_k == 1 else  # one slice: no workspace, `out` stands in
               torch.empty((config.split_k, m, n), dtype=torch.float32, device=x_q.device))
    _partial_sums_kernel[(triton.cdiv(n, config.block_n), config.split_k)](
        x_q, w_q, x_scale, w_scale, partial, out, m, n, k, x_q.stride(0), w_q.stride(0),
        out.stride(0), BLOCK_M=MAX_ROWS, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SPLIT_K=config.split_k, num_warps=config.num_warps, num_stages=config.num_stages)
    if config.split_k > 1:
        block = 1024
        _scale_sum_kernel[(m, triton.cdiv(n, block))](
            partial, x_scale, w_scale, out, m, n, out.stride(0), SPLIT_K=config.split_k,
            BLOCK=block, num_warps=4)
    return out
