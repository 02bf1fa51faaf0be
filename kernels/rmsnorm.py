"""RMSNorm, optionally preceded by the residual add, in one launch per call.

The arithmetic is HF's `LlamaRMSNorm` step for step: the (rounded) residual sum, then the
mean of squares and the scaling in float32, a rounding back to the input dtype, and only then
the product with the weight. So in bf16 the result differs from the torch reference only by
the order of the float32 sum of squares, not by where the roundings fall.

One program normalizes one row, the whole row in registers: hidden sizes of decoder models
(up to a few times 8192) fit, and a row never has to be read twice.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr,
                     N: tl.constexpr, EPS: tl.constexpr, BLOCK: tl.constexpr,
                     ADD_RESIDUAL: tl.constexpr):
    # Sizes and eps are compile-time constants (fixed per model): fewer launch arguments to
    # process on the host, which is what a batch-1 decode step waits on.
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(x_ptr + row * N + offs, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        residual = tl.load(residual_ptr + row * N + offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + residual.to(tl.float32)).to(x.dtype)
        tl.store(residual_ptr + row * N + offs, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / N
    normed = (xf * tl.rsqrt(variance + EPS)).to(x.dtype).to(tl.float32)
    weight = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * N + offs, (normed * weight).to(out_ptr.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / rms(x)) over the last dim of `x` (any leading shape), as HF computes it.

    The output dtype is torch's promotion of weight and x, like `weight * x.to(x.dtype)`.
    """
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(rows.shape, dtype=torch.result_type(weight, x), device=x.device)
    _launch(rows, rows, weight, out, eps, add_residual=False)
    return out.view(x.shape)


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual) in one launch; `residual` is updated in place.

    x and residual are [T, hidden] of one dtype; residual must be contiguous (it is written).
    The sum is rounded to that dtype before it is normalized, as the unfused layer does.
    """
    assert residual.is_contiguous() and residual.shape == x.shape and residual.dtype == x.dtype
    rows = x.contiguous()
    out = torch.empty(x.shape, dtype=torch.result_type(weight, x), device=x.device)
    _launch(rows, residual, weight, out, eps, add_residual=True)
    return out, residual


def _launch(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, out: torch.Tensor,
            eps: float, add_residual: bool) -> None:
    num_rows, hidden = x.shape
    if num_rows == 0:
        return
    block = triton.next_power_of_2(hidden)
    _rms_norm_kernel[(num_rows,)](
        x, residual, weight, out, N=hidden, EPS=eps, BLOCK=block, ADD_RESIDUAL=add_residual,
        num_warps=min(16, max(1, block // 512)))
