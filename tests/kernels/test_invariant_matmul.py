"""The one-launch batch-invariant product (kernels/invariant_matmul.py): a row's bits do not
depend on the rows around it or on how many there are, and the product is torch's within its
dtype's rounding; bias and scaling as `addmm`'s. On a GPU or in Triton's interpreter."""

from __future__ import annotations

import pytest
import torch

# The interpreter runs float32 products (numpy has no bfloat16); a GPU both.
DTYPES = {"cpu": [torch.float32], "cuda": [torch.float32, torch.bfloat16]}


def matrices(m: int, k: int, n: int, dtype: torch.dtype, device: str, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=generator).to(device, dtype)
    weight = (torch.randn(n, k, generator=generator) / k ** 0.5).to(device, dtype)
    return a, weight.t()  # b as `linear` hands it over: a transposed [N, K] weight


@pytest.mark.parametrize("k,n", [(200, 96), (256, 130)])
def test_a_row_has_the_same_bits_in_any_batch(device: str, k: int, n: int) -> None:
    from radixmesh.kernels.invariant_matmul import invariant_mm

    for dtype in DTYPES[device]:
        a, b = matrices(150, k, n, dtype, device, seed=k + n)
        alone = invariant_mm(a[7:8], b)
        for rows in (slice(0, 9), slice(5, 70), slice(0, 150)):  # other row counts and tiles
            batched = invariant_mm(a[rows], b)
            assert torch.equal(batched[7 - rows.start], alone[0]), (dtype, rows)
        # A neighbour changing changes nothing in the row either.
        other = a[:9].clone()
        other[3] *= -2
        assert torch.equal(invariant_mm(other, b)[7], alone[0])
        want = (a.double() @ b.double()).to(dtype)
        tolerance = 1e-4 if dtype == torch.float32 else 2 ** -7
        torch.testing.assert_close(invariant_mm(a, b), want, rtol=tolerance, atol=tolerance)


def test_bias_alpha_and_beta_as_addmm(device: str) -> None:
    from radixmesh.kernels.invariant_matmul import invariant_mm

    a, b = matrices(33, 64, 48, torch.float32, device, seed=1)
    row_bias = torch.randn(48).to(device)
    full_bias = torch.randn(33, 48).to(device)
    torch.testing.assert_close(invariant_mm(a, b, row_bias), torch.addmm(row_bias, a, b),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(invariant_mm(a, b, full_bias, beta=0.5, alpha=2.0),
                               torch.addmm(full_bias, a, b, beta=0.5, alpha=2.0),
                               rtol=1e-5, atol=1e-5)
    assert invariant_mm(a[:0], b).shape == (0, 48)
