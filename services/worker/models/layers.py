"""Building blocks shared by the decoder models: RMSNorm, RoPE and the gated MLP.

Each matches HF transformers' arithmetic op for op (same dtypes, same order), so that a model
built from them reproduces HF's logits on the same weights, not just approximately. On a CUDA
tensor, with triton installed, the norm (with its residual add), RoPE and the MLP's activation
run as one fused Triton kernel each: a small decode step is bound by kernel launches. The
kernels round where the torch ops do.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from radixmesh.kernels.fused_gate import TRITON_USABLE, use_triton
from radixmesh.services.worker.models.sinks import Cut
from radixmesh.services.worker.parallel.layers import make_row_parallel
from radixmesh.services.worker.parallel.sharding import even_range
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel
from radixmesh.services.worker.quantization.config import QuantizationConfig
from radixmesh.services.worker.quantization.linear import make_fused_linear

if TRITON_USABLE:
    from radixmesh.kernels.activation import silu_and_mul as triton_silu_and_mul
    from radixmesh.kernels.rmsnorm import fused_add_rms_norm, rms_norm
    from radixmesh.kernels.rotary import apply_rotary_inplace

RopeTables = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each [T, head_dim // 2]


class RMSNorm(nn.Module):
    """x / rms(x) * weight, normalized in float32 and cast back before the weight, as HF does.

    Called with a `residual`, it first adds it (`x + residual`, rounded to x's dtype, like the
    decoder's skip connection) and returns (normalized sum, sum): the vLLM/SGLang layout that
    lets the add and the norm share one kernel. The residual passed in may be overwritten.
    """

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if use_triton(x):
            if residual is None:
                return rms_norm(x, self.weight, self.eps)
            return fused_add_rms_norm(x, residual, self.weight, self.eps)
        if residual is None:
            return self._normalize(x)
        residual = residual + x
        return self._normalize(residual), residual

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        input_dtype = x.dtype
        x = x.to(torch.float32)
        variance = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return self.weight * x.to(input_dtype)


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)): the SwiGLU MLP of Llama, Mistral and Qwen.

    gate and up are one `gate_up_proj` (rows: HF's `gate_proj`, then `up_proj`), one GEMM.
    `prefix` is the module's HF name (`model.layers.3.mlp`): quantization may skip layers by name.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool,
                 quantization: QuantizationConfig | None = None, prefix: str = "mlp",
                 parallel: TensorParallel = SINGLE) -> None:
        super().__init__()
        # Tensor-parallel: each rank holds a slice of the intermediate features, columns of
        # gate and up, rows of down; down's partial sums are added up across ranks.
        features = even_range(intermediate_size, parallel, "MLP intermediate features")
        cut = Cut(0, features.start, features.stop, intermediate_size)
        cuts = {"gate_proj": cut, "up_proj": cut} if parallel.is_split else None
        self.gate_up_proj = make_fused_linear(
            hidden_size, {"gate_proj": cut.length, "up_proj": cut.length}, bias,
            quantization, prefix, cuts)
        self.down_proj = make_row_parallel(Cut(1, cut.start, cut.stop, cut.full), hidden_size,
                                           bias, quantization, f"{prefix}.down_proj", parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate | up] of shape [T, 2 * I]; one Triton kernel on CUDA.

    The torch path is HF's `act_fn(gate_proj(x)) * up_proj(x)` op for op, on column views.
    """
    if use_triton(gate_up):
        return triton_silu_and_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class RotaryEmbedding(nn.Module):
    """Neox-style RoPE (HF Llama's rotate-half) with cos/sin tables for every position.

    The tables are computed once in float32 exactly as HF computes them per step
    (`position * inv_freq`, then cos and sin), and only half of head_dim is stored: HF's
    `cat((freqs, freqs))` repeats it. `forward` looks up the rows for a `positions` tensor;
    `apply_rotary` rotates q and k with them.
    """

    def __init__(self, head_dim: int, max_position: int, rope_theta: float,
                 rope_scaling: dict[str, Any] | None) -> None:
        super().__init__()
        inv_freq = rope_inverse_frequencies(head_dim, rope_theta, rope_scaling, max_position)
        positions = torch.arange(max_position, dtype=torch.int64).to(torch.float32)
        freqs = positions[:, None] * inv_freq.to(positions.device)[None, :]
        # Not persistent: never in a checkpoint, rebuilt from the config.
        self.register_buffer("cos_cache", freqs.cos(), persistent=False)
        self.register_buffer("sin_cache", freqs.sin(), persistent=False)

    def forward(self, positions: torch.Tensor) -> RopeTables:
        return self.cos_cache[positions], self.sin_cache[positions]


def apply_rotary(q: torch.Tensor, k: torch.Tensor, rope: RopeTables) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """Rotates q [T, heads, D] and k [T, kv_heads, D] in their own dtype, like HF.

    On CUDA the rotation is done in place, in one kernel, and q and k themselves are returned.
    """
    if use_triton(q):
        apply_rotary_inplace(q, k, *rope)
        return q, k
    cos, sin = (table.to(q.dtype)[:, None, :] for table in rope)
    return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # HF: x * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin); written per half, the same products.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rope_inverse_frequencies(head_dim: int, rope_theta: float,
                             rope_scaling: dict[str, Any] | None,
                             max_position: int) -> torch.Tensor:
    """inv_freq [head_dim // 2] in float32 for rope types default, linear and llama3."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32)
    inv_freq = 1.0 / (rope_theta ** (exponents / head_dim))
    rope_type = (rope_scaling or {}).get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    assert rope_scaling is not None
    if rope_type == "linear":
        return inv_freq / rope_scaling["factor"]
    if rope_type == "llama3":
        return _llama3_scaling(inv_freq, rope_scaling, max_position)
    raise ValueError(f"unsupported rope_type {rope_type!r}; supported: default, linear, llama3")


def _llama3_scaling(inv_freq: torch.Tensor, scaling: dict[str, Any],
                    max_position: int) -> torch.Tensor:
    """Llama 3.1: long wavelengths slowed by `factor`, short kept, the band between blended."""
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling.get("original_max_position_embeddings") or max_position
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor

    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)
