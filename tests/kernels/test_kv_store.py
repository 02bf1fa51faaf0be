"""The KV store writes exactly the given slots, casting to the cache dtype (CPU or GPU)."""

from __future__ import annotations

import pytest
import torch

from radixmesh.kernels.kv_store import store_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_kv_store_writes_exactly_the_given_slots(dtype):
    num_slots, kv_heads, head_dim = 64, 8, 128
    k_cache = torch.zeros(num_slots, kv_heads, head_dim, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([5, 63, 17, 0, 32], device=DEVICE)
    # K and V as fp32 views into one fused projection output, the way models hand them over.
    fused = torch.randn(len(slots), 3 * kv_heads, head_dim, device=DEVICE)
    k, v = fused[:, kv_heads:2 * kv_heads], fused[:, 2 * kv_heads:]
    store_kv(k_cache, v_cache, slots, k, v)
    expected_k, expected_v = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    expected_k[slots], expected_v[slots] = k.to(dtype), v.to(dtype)
    assert torch.equal(k_cache, expected_k) and torch.equal(v_cache, expected_v)
