"""The Triton attention kernels and backend against the torch backend, on random paged caches."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.paged_cases import PagedCase, Shape, make_case

pytest.importorskip("triton")

from radixmesh.kernels.attention import paged_decode_attention  # noqa: E402
from radixmesh.kernels.kv_store import store_kv  # noqa: E402
from radixmesh.services.worker.attention.triton_backend import (  # noqa: E402
    TritonAttentionBackend,
)

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2}
HEADS = {"gqa": (32, 8), "mha": (8, 8)}
DECODE_LENS = [1, 7, 16, 17, 300, 1100]


def shape_of(heads: str, head_dim: int, page_size: int, dtype: torch.dtype,
             sliding_window: int | None = None) -> Shape:
    num_heads, num_kv_heads = HEADS[heads]
    return Shape(num_heads, num_kv_heads, head_dim, page_size, dtype, sliding_window)


def assert_matches_reference(case: PagedCase) -> None:
    expected = case.reference()
    got = case.run(TritonAttentionBackend)
    assert got.dtype == case.q.dtype and got.shape == case.q.shape
    tol = TOLERANCE[case.q.dtype]
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("head_dim", [128, 64])
@pytest.mark.parametrize("heads", ["gqa", "mha"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_matches_torch(device, page_size, heads, head_dim, dtype):
    case = make_case(shape_of(heads, head_dim, page_size, dtype), [], DECODE_LENS, device)
    assert_matches_reference(case)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("heads", ["gqa", "mha"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_extend_over_cached_prefixes_matches_torch(device, page_size, heads, dtype):
    extends = [(0, 1), (0, 70), (5, 33), (16, 16), (700, 100), (1030, 1)]
    case = make_case(shape_of(heads, 128, page_size, dtype), extends, [], device)
    assert_matches_reference(case)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_mixed_batch_matches_torch(device, page_size, dtype):
    case = make_case(shape_of("gqa", 64, page_size, dtype), [(40, 24), (0, 130)],
                     [1, 33, 1500], device)
    assert_matches_reference(case)


@pytest.mark.parametrize("window", [1, 37, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_sliding_window_matches_torch(device, dtype, window):
    case = make_case(shape_of("gqa", 64, 16, dtype, sliding_window=window),
                     [(0, 90), (50, 40), (400, 70)], [1, 36, 38, 700], device)
    assert_matches_reference(case)


@pytest.mark.parametrize("num_splits", [1, 2, 5, 16])
def test_decode_splits_agree(device, num_splits):
    """Any split count gives the same answer, also when splits outnumber the key blocks."""
    case = make_case(shape_of("gqa", 128, 16, torch.float32), [], [1, 40, 1100], device)
    keys, values = case.pool.keys(0), case.pool.values(0)
    store_kv(keys, values, case.batch.out_cache_loc, case.k, case.v)
    out = torch.empty_like(case.q)
    paged_decode_attention(case.q, keys, values, out, case.batch.page_table, case.batch.seq_lens,
                           case.shape.page_size, case.shape.spec().scaling,
                           num_splits=num_splits)
    torch.testing.assert_close(out, case.reference(), atol=1e-4, rtol=1e-4)


def test_backend_stores_new_tokens_before_attending(device):
    case = make_case(shape_of("gqa", 64, 16, torch.bfloat16), [(10, 5)], [20], device)
    case.run(TritonAttentionBackend)
    slots = case.batch.out_cache_loc
    assert torch.equal(case.pool.keys(0)[slots], case.k)
    assert torch.equal(case.pool.values(0)[slots], case.v)
