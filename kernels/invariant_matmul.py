"""A batch-invariant matrix product in one launch, for `--enable-deterministic-inference`.

A row's result must not depend on how many rows share its product (services/worker/
batch_invariant.py says why). The torch-ops way pads every product to blocks of a fixed row
count and runs one GEMM per block: invariant, but each block reads the whole weight again, so a
decode step of 512 requests read an 8B model's 16 GB four times (deterministic sharegpt-like
ran at 0.56x the default on an H100, deterministic-ab-*.json).

Here one launch covers every row. Each program computes one BLOCK_M x BLOCK_N tile of the output
over all of K, in BLOCK_K steps from k = 0, with the same compiled kernel whatever M is (M is
not specialised on), so every output element is the same sequence of tensor-core products and
float32 additions in every batch: bitwise the same rows at any M. No split over K, whose
partial sums would change with a split count chosen from the shape. Programs are ordered in
groups of GROUP_M row tiles, so those reading one column strip of the weight run together and
the strip comes from L2, not DRAM, for all but the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import triton
import triton.language as tl

from radixmesh.kernels.tuned_configs import tuned


@dataclass(frozen=True)
class InvariantTiling:
    """The one tiling every product uses: changing it changes the bits (not the invariance)."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 128
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


TILING = InvariantTiling()
INVARIANT_KERNEL = "invariant-mm"  # its name in kernels/configs/ (tuned_configs.py)


@cache
def tiling_for(n: int, k: int, device_index: int) -> InvariantTiling:
    """The tiling of every product with a [K, N] right-hand side on this device: swept per GPU
    model and shape (kernels/configs/), never per M, so a row's bits still do not depend on M."""
    return tuned(INVARIANT_KERNEL, torch.cuda.get_device_properties(device_index).name, n, k,
                 TILING)


@triton.jit(do_not_specialize=["M"])
def _invariant_mm_kernel(a_ptr, b_ptr, bias_ptr, c_ptr, M, N, K,
                         stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                         stride_bias_m, stride_bias_n, alpha, beta,
                         HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    rows_of_group = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % rows_of_group
    pid_n = (pid % (GROUP_M * tiles_n)) // rows_of_group

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak
    b = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn
    m_mask = offs_m[:, None] < M
    n_mask = offs_n[None, :] < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(K, BLOCK_K)):
        k_left = K - step * BLOCK_K
        x = tl.load(a, mask=m_mask & (offs_k[None, :] < k_left), other=0.0)
        w = tl.load(b, mask=(offs_k[:, None] < k_left) & n_mask, other=0.0)
        if IEEE:  # float32 operands: full-precision products, as torch's default (no TF32)
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w, acc)
        a += BLOCK_K * stride_ak
        b += BLOCK_K * stride_bk
    acc = acc * alpha
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_m[:, None] * stride_bias_m + offs_n[None, :] * stride_bias_n,
                       mask=m_mask & n_mask, other=0.0)
        acc += beta * bias.to(tl.float32)
    c = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=m_mask & n_mask)


def invariant_mm(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
                 beta: float = 1, alpha: float = 1,
                 tiling: InvariantTiling | None = None) -> torch.Tensor:
    """alpha * a @ b (+ beta * bias) for a [M, K] and b [K, N] of one float dtype, any strides;
    `bias` broadcasts to [M, N] (a row [N] or a full [M, N]). Row i of the result has the same
    bits whatever the other rows of `a` are, and however many there are. `tiling` defaults to
    `tiling_for` the shape (on a CPU, in Triton's interpreter, to TILING)."""
    (m, k), n = a.shape, b.shape[1]
    assert b.shape[0] == k and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    out = torch.empty((m, n), dtype=a.dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    if tiling is None:
        # A CUDA tensor's device always has its index.
        tiling = TILING if a.device.type != "cuda" else tiling_for(n, k, a.device.index)
    if bias is not None:
        bias = bias.expand(m, n)  # strides of 0 where it broadcasts
    grid = (triton.cdiv(m, tiling.block_m) * triton.cdiv(n, tiling.block_n),)
    _invariant_mm_kernel[grid](
        a, b, out if bias is None else bias, out, m, n, k, a.stride(0), a.stride(1),
        b.stride(0), b.stride(1), out.stride(0), 0 if bias is None else bias.stride(0),
        0 if bias is None else bias.stride(1), float(alpha), float(beta), HAS_BIAS=bias is not None,
        IEEE=a.dtype == torch.float32, BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n,
        BLOCK_K=tiling.block_k, GROUP_M=tiling.group_m, num_warps=tiling.num_warps,
        num_stages=tiling.num_stages)
    return out
