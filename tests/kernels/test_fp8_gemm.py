"""The FP8 GEMM for few tokens (kernels/fp8_gemm.py) against the product it stands for, on a
GPU or in Triton's interpreter: the dequantized operands multiplied in float32, and on GPUs
with FP8 tensor cores `torch._scaled_mm` on the same codes and scales."""

from __future__ import annotations

import pytest
import torch

from radixmesh.services.worker.quantization import fp8

SHAPES = [  # (M, N, K, block_n, block_k, split_k): a split K, an uneven N, one row, 16 rows
    (1, 96, 512, 32, 128, 2), (5, 100, 256, 64, 128, 1), (16, 64, 1024, 32, 256, 4),
    (3, 6144, 4096, 64, 256, 4)]


def operands(m: int, n: int, k: int, device: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(m * n + k)
    x = torch.randn(m, k, generator=generator).to(device)
    w = (torch.randn(n, k, generator=generator) * 0.02).to(device)
    return (*fp8.quantize_rows(x), *fp8.quantize_rows(w))


@pytest.mark.parametrize("m,n,k,block_n,block_k,split_k", SHAPES)
def test_the_product_of_the_dequantized_operands(device: str, m: int, n: int, k: int,
                                                 block_n: int, block_k: int,
                                                 split_k: int) -> None:
    from radixmesh.kernels.fp8_gemm import SmallMConfig, fp8_gemm_small_m

    if device == "cpu" and k * n > 1 << 20:
        pytest.skip("too slow for the interpreter")
    x_q, x_scale, w_q, w_scale = operands(m, n, k, device)
    config = SmallMConfig(block_n=block_n, block_k=block_k, split_k=split_k)
    out = fp8_gemm_small_m(x_q, x_scale, w_q, w_scale, config, out_dtype=torch.float32)
    want = (x_q.float() * x_scale[:, None]) @ (w_q.float() * w_scale[:, None]).T
    # Exact products summed in float32 in another order (on Hopper, tensor-core partial sums
    # promoted to float32 every few products): far below e4m3's own 2^-4 rounding.
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.fp8_gemm_capable("cuda")),
                    reason="needs FP8 tensor cores (compute capability 8.9+)")
@pytest.mark.parametrize("m,n,k", [(1, 6144, 4096), (16, 4096, 14336), (7, 28672, 4096)])
def test_bf16_output_is_scaled_mms_within_one_rounding(m: int, n: int, k: int) -> None:
    from radixmesh.kernels.fp8_gemm import fp8_gemm_small_m, small_m_config

    x_q, x_scale, w_q, w_scale = operands(m, n, k, "cuda")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = fp8_gemm_small_m(x_q, x_scale, w_q, w_scale, small_m_config(n, k, sms))
    want = torch._scaled_mm(x_q, w_q.t(), x_scale.unsqueeze(-1), w_scale.unsqueeze(0),
                            out_dtype=torch.bfloat16)
    # The same products summed in another order, then rounded to bf16. Hopper's FP8 tensor
    # cores keep fewer bits than float32 while they accumulate (DeepSeek-V3's report), so the
    # sums part by more than float32 reordering would: measured on an H100, by up to ~8e-4 of
    # the outputs' RMS, which puts outputs near zero far apart relative to themselves.
    rms = want.float().square().mean().sqrt().item()
    torch.testing.assert_close(out, want, rtol=2 ** -7, atol=2e-3 * rms)
    assert (out != want).float().mean() < 0.05


def test_the_tiling_spreads_a_projection_over_the_sms() -> None:
    pytest.importorskip("triton")
    from radixmesh.kernels.fp8_gemm import fits_small_m, small_m_config

    for n, k in [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]:
        config = small_m_config(n, k, num_sms=132)
        programs = -(-n // config.block_n) * config.split_k
        assert programs >= 264 or config.split_k == 8
        assert fits_small_m(1, n, k, config) and fits_small_m(16, n, k, config)
        assert not fits_small_m(17, n, k, config)
