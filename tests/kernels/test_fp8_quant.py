"""The per-token FP8 quantization kernel against `quantize_rows`, the torch ops it replaces:
bitwise-equal codes and scales, so the FP8 GEMM's input is the same whichever ran.

GPU only: Triton's interpreter converts float32 to float8 with a wrong rounding (125.3 became
64, not 128, in triton 3.9), so a CPU run could not tell a right kernel from a wrong one."""

from __future__ import annotations

import pytest
import torch

from radixmesh.kernels.fused_gate import TRITON_USABLE, set_fused_kernels
from radixmesh.services.worker.quantization import fp8

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not TRITON_USABLE,
                                                  reason="needs triton and a CUDA device")]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,hidden", [(1, 4096), (7, 14336), (33, 6144), (2, 100)])
def test_codes_and_scales_equal_the_torch_ops(dtype: torch.dtype, rows: int,
                                              hidden: int) -> None:
    from radixmesh.kernels.fp8_quant import per_token_quant_fp8

    generator = torch.Generator("cuda").manual_seed(rows * hidden)
    x = (torch.randn(rows, hidden, device="cuda", generator=generator) * 3).to(dtype)
    x[0, : hidden // 2] *= 1000  # one row spanning e4m3's whole range
    if rows > 2:
        x[1] = 0  # an all-zero row: the floor scale, zero codes
    q, scale = per_token_quant_fp8(x, fp8.AMAX_FLOOR)
    want_q, want_scale = fp8.quantize_rows(x)
    assert q.dtype == fp8.FP8 and scale.dtype == torch.float32
    assert torch.equal(scale, want_scale)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))


def test_strided_rows_and_no_rows() -> None:
    from radixmesh.kernels.fp8_quant import per_token_quant_fp8

    wide = torch.randn(5, 2 * 4096, device="cuda", dtype=torch.bfloat16)
    view = wide[:, :4096]  # rows a stride apart, as a slice of a fused projection's output
    q, scale = per_token_quant_fp8(view, fp8.AMAX_FLOOR)
    want_q, want_scale = fp8.quantize_rows(view)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q.view(torch.uint8), want_q.view(torch.uint8))
    q, scale = per_token_quant_fp8(wide[:0], fp8.AMAX_FLOOR)
    assert q.shape == (0, 2 * 4096) and scale.shape == (0,)


@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.fp8_gemm_capable("cuda")),
                    reason="needs FP8 tensor cores (compute capability 8.9+)")
def test_the_fp8_linear_gives_the_same_bits_with_the_kernel_or_the_torch_ops() -> None:
    weight = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    q_weight, weight_scale = fp8.quantize_rows(weight)
    x = torch.randn(3, 11, 4096, device="cuda", dtype=torch.bfloat16)
    fused = fp8.scaled_mm_linear(x, q_weight, weight_scale, None)
    previous = set_fused_kernels(False)
    try:
        unfused = fp8.scaled_mm_linear(x, q_weight, weight_scale, None)
    finally:
        set_fused_kernels(previous)
    assert fused.shape == (3, 11, 6144)
    assert torch.equal(fused, unfused)
