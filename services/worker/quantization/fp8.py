"""FP8 (e4m3) weights with one scale per output channel; activations scaled per token.

Storage: `weight` in float8_e4m3fn [out, in] and `weight_scale` in float32 [out], with
W ~= weight * weight_scale[:, None]; the scale of a row is amax(|row|) / 448 (448 is e4m3's
largest finite value), so every row uses e4m3's whole range. Per-tensor scales of a
prequantized checkpoint are loaded as a per-row vector holding the same value, exactly.

Two ways to compute x @ W.T:
- where the device has FP8 tensor cores (CUDA compute capability 8.9 and up: Ada, Hopper,
  Blackwell), `torch._scaled_mm` with row-wise scales: x is quantized per token on the fly
  (amax(|x_t|) / 448, the dynamic scheme), the GEMM runs in FP8 and the scales are applied in
  its epilogue. Halves the weight bytes each decode step reads and doubles the GEMM peak.
  With triton installed the per-token quantization is one kernel (kernels/fp8_quant.py), and
  up to 16 tokens (decode) so is the GEMM (kernels/fp8_gemm.py): there it only streams the
  weight, and cuBLASLt's FP8 kernels leave bandwidth unused.
- elsewhere (the CPU, older GPUs) the weight is dequantized per call into the activation dtype
  and multiplied as usual: FP8 storage keeps the memory saving; the activations stay unrounded.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from radixmesh.kernels.fused_gate import TRITON_USABLE, use_triton
from radixmesh.services.worker.models.sinks import ExactDtypeSink, RowScaleSink, Sink
from radixmesh.services.worker.quantization.base import QUANTIZATION_METHODS, QuantizationMethod

if TYPE_CHECKING:
    from radixmesh.services.worker.quantization.linear import QuantLinear

if TRITON_USABLE:
    from radixmesh.kernels.fp8_gemm import (
        MAX_ROWS,
        SMALL_M_KERNEL,
        SmallMConfig,
        fits_small_m,
        fp8_gemm_small_m,
        small_m_config,
    )
    from radixmesh.kernels.fp8_quant import per_token_quant_fp8
    from radixmesh.kernels.tuned_configs import tuned

logger = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
# An all-zero row or token still needs a positive scale; any one quantizes it to zeros.
AMAX_FLOOR = 1e-12
# Row-wise scaled GEMMs produce bfloat16 in every torch that has them (some only that).
SCALED_MM_OUT = torch.bfloat16
_scaled_mm_failed = False  # set once a device refused the row-wise scaled GEMM


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with weight[i] ~= q[i] * scale[i] per row (last dim reduced): q in e4m3,
    scale = amax(|row|) * (1 / 448) in float32. Computed in float32 whatever the input dtype."""
    rows = weight.float()
    # Times the reciprocal, written out: that is what `/ FP8_MAX` runs on CUDA (a division by a
    # scalar becomes a product there), and the quantization kernel does the same on any device.
    scale = rows.abs().amax(dim=-1).clamp(min=AMAX_FLOOR) * (1.0 / FP8_MAX)
    # The clamp keeps a quotient that rounds up past 448 finite (e4m3fn has no infinity).
    q = (rows / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale[:, None] in `dtype`: e4m3 values are exact in bf16, fp16 and fp32, so the only
    rounding beyond FP8's own is that of the scale and the product in `dtype` (2^-8 relative
    each in bf16, 16x finer than e4m3's; nothing that matters in fp32)."""
    return q.to(dtype).mul_(scale.to(dtype).unsqueeze(-1))


def dequant_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """The fallback: F.linear with the weight dequantized for this call only."""
    return F.linear(x, dequantize_rows(weight, weight_scale, x.dtype), bias)


def scaled_mm_linear(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
    """x @ (weight * weight_scale).T + bias on FP8 tensor cores, x quantized per token.

    `torch._scaled_mm(a [M, K] row-major, b [K, N] column-major, scale_a [M, 1], scale_b
    [1, N])` is the row-wise form (torch >= 2.5; the positional signature is unchanged since
    2.1); `weight.t()` of a contiguous [N, K] weight is the column-major b it wants.
    """
    tokens = x.reshape(-1, x.shape[-1])
    fused = use_triton(tokens) and tokens.stride(-1) == 1
    if fused:
        xq, x_scale = per_token_quant_fp8(tokens, AMAX_FLOOR)  # one launch, same bits
    else:
        xq, x_scale = quantize_rows(tokens)
    fused_bias = bias is not None and bias.dtype == SCALED_MM_OUT
    config = fused and _small_m_config(xq, weight)
    if config:
        out = fp8_gemm_small_m(xq, x_scale, weight, weight_scale, config, SCALED_MM_OUT)
        fused_bias = False
    else:
        out = torch._scaled_mm(xq, weight.t(), x_scale.unsqueeze(-1), weight_scale.unsqueeze(0),
                               bias=bias if fused_bias else None, out_dtype=SCALED_MM_OUT)
    out = out.to(x.dtype)
    if bias is not None and not fused_bias:
        out = out + bias
    return out.view(*x.shape[:-1], weight.shape[0])


def _small_m_config(xq: torch.Tensor, weight: torch.Tensor) -> SmallMConfig | None:
    """The few-token kernel's tiling where it takes the product (decode sizes), else None."""
    (m, k), n = xq.shape, weight.shape[0]
    if m > MAX_ROWS:
        return None
    config = _tiling(n, k, xq.device.index)  # a CUDA tensor's device always has its index
    return config if fits_small_m(m, n, k, config) else None


@cache
def _tiling(n: int, k: int, device_index: int) -> SmallMConfig:
    """The tiling swept on this GPU model for the shape (kernels/configs/), else the guess."""
    properties = torch.cuda.get_device_properties(device_index)
    return tuned(SMALL_M_KERNEL, properties.name, n, k,
                 small_m_config(n, k, properties.multi_processor_count))


def scaled_mm_usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """FP8 GEMMs need a CUDA device of compute capability 8.9+, and cuBLASLt wants K and N in
    multiples of 16 (M is free)."""
    return (not _scaled_mm_failed and x.is_cuda and hasattr(torch, "_scaled_mm")
            and fp8_gemm_capable(x.device) and x.shape[-1] % 16 == 0 and weight.shape[0] % 16 == 0
            and x.numel() > 0)


def fp8_gemm_capable(device: torch.device | str) -> bool:
    """True on CUDA devices with FP8 tensor cores (sm89 and up)."""
    device = torch.device(device)
    if device.type != "cuda":
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return _capability(index) >= (8, 9)


@cache
def _capability(index: int) -> tuple[int, int]:
    # Asked on every FP8 GEMM outside CUDA graphs: looked up once per device.
    return torch.cuda.get_device_capability(index)


class Fp8Method(QuantizationMethod):
    """Per-output-channel FP8 weights, per-token dynamic activation scales (see module doc).

    A static checkpoint's `input_scale` is not read: per-token scales are at least as fine.
    KV-cache scales (`self_attn.k_scale`, `v_scale`, ...) belong to no linear layer: the loader
    reads them for an FP8 KV cache (services/worker/kv_scales.py), whatever the weights are.
    """

    ignored_suffixes = (".input_scale",)

    def create_weights(self, layer: QuantLinear) -> None:
        layer.weight = nn.Parameter(
            torch.empty(layer.out_features, layer.in_features, dtype=FP8), requires_grad=False)
        layer.weight_scale = nn.Parameter(
            torch.empty(layer.out_features, dtype=torch.float32), requires_grad=False)

    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
        if scaled_mm_usable(x, layer.weight):
            try:
                return scaled_mm_linear(x, layer.weight, layer.weight_scale, layer.bias)
            except RuntimeError as error:  # e.g. a torch whose sm89 build lacks row-wise scaling
                _disable_scaled_mm(error)
        return dequant_linear(x, layer.weight, layer.weight_scale, layer.bias)

    def quantize_rows(self, layer: QuantLinear, rows: slice, weight: torch.Tensor) -> None:
        q, scale = quantize_rows(weight.to(device=layer.weight.device, dtype=layer.act_dtype))
        layer.weight[rows] = q
        layer.weight_scale[rows] = scale

    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        return dequantize_rows(layer.weight, layer.weight_scale, layer.act_dtype)

    def checkpoint_sinks(self, layer: QuantLinear, rows: slice) -> dict[str, Sink]:
        if self.config.prequantized:
            return {"weight": ExactDtypeSink(layer.weight.detach()[rows]),
                    "weight_scale": RowScaleSink(layer.weight_scale.detach()[rows])}
        return {"weight": QuantizeSink(self, layer, rows)}


class QuantizeSink(Sink):
    """A float checkpoint weight, rounded to the activation dtype (as the unquantized model
    holds it), then quantized into a block of rows of the layer."""

    def __init__(self, method: QuantizationMethod, layer: QuantLinear, rows: slice) -> None:
        self.method, self.layer, self.rows = method, layer, rows
        self.view = layer.weight.detach()[rows]

    def mismatch(self, tensor: torch.Tensor) -> str | None:
        if not tensor.is_floating_point() or tensor.dtype == FP8:
            return f"checkpoint dtype {tensor.dtype}, a float weight to quantize expected"
        if tensor.shape != self.view.shape:
            return f"checkpoint {tuple(tensor.shape)}, model {tuple(self.view.shape)}"
        return None

    def load(self, tensor: torch.Tensor) -> None:
        self.method.quantize_rows(self.layer, self.rows, tensor)


def _disable_scaled_mm(error: RuntimeError) -> None:
    global _scaled_mm_failed
    _scaled_mm_failed = True
    logger.warning("torch._scaled_mm failed (%s); FP8 layers fall back to dequantized GEMMs",
                   error)


QUANTIZATION_METHODS.add("fp8", Fp8Method)
