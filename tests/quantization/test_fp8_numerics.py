"""FP8 (e4m3) quantization, one tensor and one layer at a time: round trips, fused layers, and
the two GEMM paths (`torch._scaled_mm` where the hardware has FP8, dequantized elsewhere)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from radixmesh.services.worker.quantization import fp8
from radixmesh.services.worker.quantization.base import QUANTIZATION_METHODS
from radixmesh.services.worker.quantization.config import (
    QUANTIZATION_CHOICES,
    QuantizationConfig,
)
from radixmesh.services.worker.quantization.fp8 import (
    FP8_MAX,
    dequant_linear,
    dequantize_rows,
    quantize_rows,
    scaled_mm_linear,
)
from radixmesh.services.worker.quantization.linear import FusedQuantLinear, QuantLinear
from tests.quantization.common import E4M3_REL_BOUND, E4M3_SUBNORMAL_ABS, e4m3_rms_error

FP8_AT_LOAD = QuantizationConfig("fp8", prequantized=False)


def weights(rows: int = 256, cols: int = 512, seed: int = 0) -> torch.Tensor:
    """Rows over six orders of magnitude, heavy tails, one all-zero row: every regime of
    the format (normals, subnormals, exact zeros) shows up."""
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=generator) ** 3
    w *= 10.0 ** torch.empty(rows, 1).uniform_(-3, 3, generator=generator)
    w[7] = 0
    return w


def test_the_flag_lists_exactly_the_registered_methods() -> None:
    assert tuple(QUANTIZATION_METHODS.names()) == QUANTIZATION_CHOICES


def test_round_trip_error_is_within_e4m3_precision() -> None:
    """Per element, |W - dequant(quant(W))| <= 2^-4 |W| + 2^-10 s (+ float32 slack).

    Derivation: a row is divided by s = amax / 448, so its values land in [-448, 448], e4m3's
    finite range, and are rounded to nearest. e4m3 has 3 mantissa bits: a normal value
    (|v| >= 2^-6) of exponent e is off by at most half an ulp, 2^-3 * 2^e / 2 <= 2^-4 |v|;
    a subnormal one is off by at most half the subnormal spacing 2^-9, i.e. 2^-10. Multiplying
    back by s scales both. The division and the product in float32 add 2^-24 each.
    """
    w = weights()
    q, scale = quantize_rows(w)
    restored = dequantize_rows(q, scale, torch.float32)

    assert q.dtype == torch.float8_e4m3fn and scale.shape == (w.shape[0],)
    bound = (E4M3_REL_BOUND + 2**-22) * w.abs() + E4M3_SUBNORMAL_ABS * scale[:, None]
    assert ((restored - w).abs() <= bound).all()
    normal = w.abs() >= 2**-6 * scale[:, None]
    worst = ((restored - w).abs() / w.abs())[normal].max()
    assert worst > 0.9 * E4M3_REL_BOUND / (1 + E4M3_REL_BOUND)  # the bound is tight, not slack
    # Each row's largest element is 448 * s exactly: the whole range is used.
    assert torch.equal(q.float().abs().amax(dim=1)[scale > 1e-11],
                       torch.full(((scale > 1e-11).sum(),), FP8_MAX))
    assert not restored[7].any()  # a zero row stays zero (and its scale is finite)


def test_rms_error_matches_the_mantissa_width() -> None:
    """The derived RMS error of e4m3 (common.e4m3_rms_error, 0.0265) is what Gaussian weights
    show, and a GEMM's output carries the same relative error: the basis of the model bound."""
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(1024, 1024, generator=generator)
    x = torch.randn(64, 1024, generator=generator)
    restored = dequantize_rows(*quantize_rows(w), torch.float32)

    eps = e4m3_rms_error()
    assert (restored - w).norm() / w.norm() == pytest.approx(eps, rel=0.05)
    assert (x @ restored.T - x @ w.T).norm() / (x @ w.T).norm() == pytest.approx(eps, rel=0.1)


def test_fused_layer_scales_each_output_channel_on_its_own() -> None:
    """q, k and v (here ~1000x apart in size) quantized shard by shard into one fused layer
    equal the concatenation quantized per row: no shard's scale reads another's rows."""
    shards = {"q_proj": 64, "k_proj": 32, "v_proj": 32}
    parts = {name: torch.randn(rows, 48) * 10.0 ** (3 * i)
             for i, (name, rows) in enumerate(shards.items())}
    layer = FusedQuantLinear(48, shards, bias=False, method=fp8.Fp8Method(FP8_AT_LOAD))

    for name, rows in layer.shard_rows.items():
        layer.quantize_rows(rows, parts[name])

    q, scale = quantize_rows(torch.cat(list(parts.values())))
    assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(layer.weight_scale, scale)
    for name, rows in layer.shard_rows.items():  # a shard alone quantizes the same
        assert torch.equal(layer.weight_scale[rows], quantize_rows(parts[name])[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_fallback_is_a_linear_over_the_dequantized_weight(dtype: torch.dtype) -> None:
    torch.set_default_dtype(dtype)
    try:
        layer = QuantLinear(512, 256, bias=True, method=fp8.Fp8Method(FP8_AT_LOAD))
    finally:
        torch.set_default_dtype(torch.float32)
    layer.quantize_rows(slice(None), weights())
    layer.bias.data.normal_()
    x = torch.randn(5, 3, 512).to(dtype)

    out = layer(x)  # on the CPU: the dequantizing path

    assert out.dtype == dtype and out.shape == (5, 3, 256)
    assert layer.weight.dtype == torch.float8_e4m3fn  # storage stays FP8 between calls
    assert torch.equal(out, F.linear(x, layer.dequantized_weight(), layer.bias))


def scaled_mm_devices() -> list:
    """The CPU where this torch implements `_scaled_mm` (it checks the call's layout and scale
    shapes), and a CUDA device with FP8 tensor cores: the path that matters, for GPU sessions."""
    return [pytest.param("cpu", id="cpu"),
            pytest.param("cuda", id="cuda", marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(not (torch.cuda.is_available()
                                        and fp8.fp8_gemm_capable("cuda")),
                                   reason="needs a CUDA device of compute capability 8.9+")])]


@pytest.mark.parametrize("device", scaled_mm_devices())
@pytest.mark.parametrize("with_bias", [False, True])
def test_scaled_mm_matches_the_dequantized_path(device: str, with_bias: bool) -> None:
    """FP8 x FP8 on `_scaled_mm` vs the exact product of the unrounded activations with the
    dequantized weight (float64). Sound bound, per output element:
      2^-4 (|x| @ |W^|.T) + 2^-10 s_x (1 @ |W^|.T)   activations rounded to e4m3, per token
      + 2^-8 |out|                                   the bfloat16 output
      + 2^-16 (|x| @ |W^|.T)                         float32 accumulation over K = 512
    """
    generator = torch.Generator().manual_seed(2)
    w = torch.randn(256, 512, generator=generator) * 0.02
    x = (torch.randn(37, 512, generator=generator) * 3).to(torch.bfloat16)
    bias = torch.randn(256, generator=generator).to(torch.bfloat16) if with_bias else None
    q, scale = quantize_rows(w)
    q, scale, xd = q.to(device), scale.to(device), x.to(device)
    try:
        out = scaled_mm_linear(xd, q, scale, None if bias is None else bias.to(device)).cpu()
    except (RuntimeError, NotImplementedError) as error:
        if device == "cpu":
            pytest.skip(f"this torch has no CPU _scaled_mm: {error}")
        raise

    w_hat = dequantize_rows(q.cpu(), scale.cpu(), torch.float64)
    exact = x.double() @ w_hat.T + (0 if bias is None else bias.double())
    magnitude = x.double().abs() @ w_hat.abs().T
    x_scale = x.double().abs().amax(dim=-1, keepdim=True) / FP8_MAX
    bound = ((E4M3_REL_BOUND + 2**-16) * magnitude
             + E4M3_SUBNORMAL_ABS * x_scale * w_hat.abs().sum(dim=1)
             + 2**-8 * out.double().abs() + 1e-6)
    assert out.dtype == torch.bfloat16 and out.shape == (37, 256)
    assert ((out.double() - exact).abs() <= bound).all()
    fallback = dequant_linear(x, q.cpu(), scale.cpu(), bias).double()
    relative = (out.double() - fallback).norm() / fallback.norm()
    assert relative < 2 * e4m3_rms_error()  # activation rounding: about one e4m3 RMS error


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and fp8.fp8_gemm_capable("cuda")),
                    reason="needs a CUDA device of compute capability 8.9+")
def test_a_layer_on_an_fp8_gpu_takes_the_scaled_mm_path() -> None:
    with torch.device("cuda"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            layer = QuantLinear(512, 256, bias=False, method=fp8.Fp8Method(FP8_AT_LOAD))
        finally:
            torch.set_default_dtype(torch.float32)
    layer.quantize_rows(slice(None), weights().cuda())
    x = torch.randn(9, 512, device="cuda", dtype=torch.bfloat16)

    out = layer(x)

    assert torch.equal(out, scaled_mm_linear(x, layer.weight, layer.weight_scale, None))
    assert not torch.equal(out, dequant_linear(x, layer.weight, layer.weight_scale, None))
