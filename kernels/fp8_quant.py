"""Per-token FP8 (e4m3) quantization of activations in one launch.

The FP8 GEMM wants its activations in e4m3 with one float32 scale per token (row):
scale = max(amax(|row|), floor) * (1 / 448) and q = row / scale. In torch ops that is seven kernels
and a float32 copy of the activations; measured on an H100 it cost 13-27 us per linear layer
at decode sizes and up to 870 us at 4,096 tokens, more than the FP8 GEMM saves over bf16
(`load-tests/results/fp8-gemm-*`). Here one program quantizes one row, the whole row in
registers (as the RMSNorm kernel holds it), so each row is read once and written once.

The arithmetic is `quantize_rows`' (services/worker/quantization/fp8.py) step for step: the
amax in float32, the floor, the product with 1/448 in float32 for the scale, IEEE division for
the quotient, the clamp to +-448, and a round-to-nearest-even conversion; the outputs are
bitwise equal on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448


@triton.jit
def _per_token_quant_kernel(x_ptr, q_ptr, scale_ptr, stride_x,
                            K: tl.constexpr, BLOCK: tl.constexpr, AMAX_FLOOR: tl.constexpr,
                            QMAX: tl.constexpr, INV_QMAX: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=0)
    scale = tl.maximum(amax, AMAX_FLOOR) * INV_QMAX
    tl.store(scale_ptr + row, scale)
    # div_rn: IEEE division, as torch's; Triton's `/` on float32 may be the approximate one.
    q = tl.clamp(tl.math.div_rn(x, scale), -QMAX, QMAX)
    tl.store(q_ptr + row * K + offs, q.to(q_ptr.dtype.element_ty), mask=mask)


def per_token_quant_fp8(x: torch.Tensor, amax_floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(q [M, K] e4m3, scale [M] float32) with x[m] ~= q[m] * scale[m], for a 2-D `x` whose
    rows may be strided (a view of a wider tensor) but whose last dim is contiguous."""
    assert x.dim() == 2 and x.stride(-1) == 1, "rows of contiguous elements expected"
    num_rows, hidden = x.shape
    q = torch.empty((num_rows, hidden), dtype=FP8, device=x.device)
    scale = torch.empty(num_rows, dtype=torch.float32, device=x.device)
    if num_rows == 0:
        return q, scale
    block = triton.next_power_of_2(hidden)
    _per_token_quant_kernel[(num_rows,)](
        x, q, scale, x.stride(0), K=hidden, BLOCK=block, AMAX_FLOOR=amax_floor, QMAX=FP8_MAX,
        INV_QMAX=1.0 / FP8_MAX, num_warps=min(16, max(1, block // 512)))
    return q, scale
