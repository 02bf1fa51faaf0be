"""The fused RMSNorm, SiLU-and-multiply and rotary kernels against the torch layers they
replace, and greedy generation with them against generation without them (GPU, fp32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from radixmesh.engine import Engine  # noqa: E402
from radixmesh.kernels.activation import silu_and_mul, silu_mul  # noqa: E402
from radixmesh.kernels.fused_gate import set_fused_kernels  # noqa: E402
from radixmesh.kernels.rmsnorm import fused_add_rms_norm, rms_norm  # noqa: E402
from radixmesh.kernels.rotary import apply_rotary_inplace  # noqa: E402
from radixmesh.make_model import make_model  # noqa: E402
from radixmesh.services.scheduler.config import SchedulerConfig  # noqa: E402
from radixmesh.services.worker.config import WorkerConfig  # noqa: E402
from radixmesh.services.worker.models.layers import (  # noqa: E402
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
)

pytestmark = pytest.mark.gpu

# bf16: one rounding step apart at most (the float32 sums are ordered differently).
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
TOKENS = pytest.mark.parametrize("num_tokens", [1, 7, 300])


def torch_norm(hidden: int, dtype: torch.dtype, device: str) -> RMSNorm:
    norm = RMSNorm(hidden, eps=1e-5).to(device=device, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(hidden) + 0.5)
    return norm


@DTYPES
@TOKENS
@pytest.mark.parametrize("hidden", [64, 4096])
def test_rms_norm_matches_torch(device, hidden, num_tokens, dtype):
    norm = torch_norm(hidden, dtype, device)
    x = torch.randn(num_tokens, hidden, device=device).mul(3).to(dtype)
    got = rms_norm(x, norm.weight, norm.eps)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, norm._normalize(x), **TOLERANCE[dtype])


@DTYPES
def test_rms_norm_over_heads_keeps_the_shape(device, dtype):
    norm = torch_norm(128, dtype, device)  # Qwen3's q_norm: over head_dim of [T, heads, D]
    q = torch.randn(7, 8, 128, device=device).to(dtype)
    torch.testing.assert_close(rms_norm(q, norm.weight, norm.eps), norm._normalize(q),
                               **TOLERANCE[dtype])


@DTYPES
@TOKENS
@pytest.mark.parametrize("hidden", [64, 4096])
def test_fused_add_rms_norm_matches_torch(device, hidden, num_tokens, dtype):
    norm = torch_norm(hidden, dtype, device)
    x = torch.randn(num_tokens, hidden, device=device).to(dtype)
    residual = torch.randn(num_tokens, hidden, device=device).mul(4).to(dtype)
    expected_sum = residual + x
    expected = norm._normalize(expected_sum)
    got, got_sum = fused_add_rms_norm(x, residual, norm.weight, norm.eps)
    assert got_sum.data_ptr() == residual.data_ptr()  # updated in place
    torch.testing.assert_close(got_sum, expected_sum, atol=0, rtol=0)  # one rounding, same
    torch.testing.assert_close(got, expected, **TOLERANCE[dtype])


@DTYPES
@TOKENS
@pytest.mark.parametrize("width", [64, 1000, 14336])
def test_silu_and_mul_matches_torch(device, width, num_tokens, dtype):
    gate_up = torch.randn(num_tokens, 2 * width, device=device).mul(3).to(dtype)
    gate, up = gate_up.chunk(2, dim=-1)
    expected = F.silu(gate) * up
    torch.testing.assert_close(silu_and_mul(gate_up), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(silu_mul(gate.contiguous(), up.contiguous()), expected,
                               **TOLERANCE[dtype])


def rope_case(num_tokens: int, head_dim: int, dtype: torch.dtype, device: str):
    rope = RotaryEmbedding(head_dim, max_position=100_001, rope_theta=500000.0,
                           rope_scaling=None).to(device)
    positions = torch.randint(0, 100_001, (num_tokens,), device=device)
    positions[0] = 100_000
    q = torch.randn(num_tokens, 32, head_dim, device=device).mul(2).to(dtype)
    k = torch.randn(num_tokens, 8, head_dim, device=device).mul(2).to(dtype)
    return rope, positions, q, k


@DTYPES
@TOKENS
@pytest.mark.parametrize("head_dim", [64, 128])
def test_rotary_matches_torch(device, head_dim, num_tokens, dtype):
    rope, positions, q, k = rope_case(num_tokens, head_dim, dtype, device)
    tables = rope(positions)
    set_fused_kernels(False)
    try:
        expected_q, expected_k = apply_rotary(q, k, tables)
    finally:
        set_fused_kernels(True)
    by_rows_q, by_rows_k = q.clone(), k.clone()
    apply_rotary_inplace(by_rows_q, by_rows_k, *tables)
    by_position_q, by_position_k = q.clone(), k.clone()
    apply_rotary_inplace(by_position_q, by_position_k, rope.cos_cache, rope.sin_cache, positions)
    for got_q, got_k in [(by_rows_q, by_rows_k), (by_position_q, by_position_k)]:
        torch.testing.assert_close(got_q, expected_q, **TOLERANCE[dtype])
        torch.testing.assert_close(got_k, expected_k, **TOLERANCE[dtype])


def test_rotary_on_strided_views_of_a_fused_projection(device):
    rope, positions, _, _ = rope_case(7, 64, torch.bfloat16, device)
    qkv = torch.randn(7, (4 + 2 + 2) * 64, device=device).to(torch.bfloat16)
    q, k = qkv[:, :256].view(7, 4, 64), qkv[:, 256:384].view(7, 2, 64)
    expected_q, expected_k = q.clone(), k.clone()
    untouched_v = qkv[:, 384:].clone()
    apply_rotary_inplace(expected_q, expected_k, *rope(positions))
    apply_rotary_inplace(q, k, *rope(positions))
    assert torch.equal(qkv[:, :256].view(7, 4, 64), expected_q)
    assert torch.equal(qkv[:, 256:384].view(7, 2, 64), expected_k)
    assert torch.equal(qkv[:, 384:], untouched_v)


PROMPTS = ["The quick brown fox jumps over the lazy dog " * 4 + "and then", "Hello",
           "Paged attention keeps keys and values in fixed-size pages " * 5]


def generate(model, fused: bool) -> list[list[int]]:
    previous = set_fused_kernels(fused)
    try:
        engine = Engine(WorkerConfig(model_path=str(model), device="cuda", page_size=16,
                                     max_total_tokens=4096),
                        SchedulerConfig(chunked_prefill_size=32))
        bodies = [{"text": text, "max_new_tokens": 32, "temperature": 0, "ignore_eos": True}
                  for text in PROMPTS]
        return [c.token_ids for c in engine.generate(bodies)]
    finally:
        set_fused_kernels(previous)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_greedy_output_same_with_fused_kernels(tmp_path, arch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = make_model(tmp_path / arch, arch, num_layers=2, hidden_size=256, num_heads=4,
                       num_kv_heads=2, intermediate_size=512)
    expected = generate(model, fused=False)
    got = generate(model, fused=True)
    assert got == expected
    assert all(len(ids) == 32 for ids in got)
