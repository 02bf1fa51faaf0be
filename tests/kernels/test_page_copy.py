"""The page-copy kernel moves exactly the listed rows of every plane, between buffers that are
not one tensor, with any strides, and leaves every other row alone."""

from __future__ import annotations

import pytest
import torch

page_copy = pytest.importorskip("radixmesh.kernels.page_copy", reason="needs triton")


def bases(tensors: list[torch.Tensor], device: str) -> torch.Tensor:
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=device)


@pytest.mark.parametrize("num_ctas", [1, 3, 64])
def test_rows_of_every_plane_reach_their_places(device: str, num_ctas: int) -> None:
    planes, rows, row_words = 4, 9, 1500  # not a multiple of the kernel's block
    generator = torch.Generator().manual_seed(0)
    # Source: one tensor per plane, rows contiguous (the device pool's per-layer K and V).
    sources = [torch.randint(-2**62, 2**62, (rows, row_words), generator=generator).to(device)
               for _ in range(planes)]
    # Destination: one tensor [slot, plane, word] (the host pool's layout), seen as planes
    # row_words apart whose rows are planes * row_words apart.
    slots = 7
    pool = torch.zeros(slots, planes, row_words, dtype=torch.int64, device=device)
    pool_planes = [pool[:, plane] for plane in range(planes)]
    src_rows = torch.tensor([3, 0, 8], device=device)
    dst_rows = torch.tensor([6, 2, 1], device=device)

    page_copy.copy_rows(bases(sources, device), bases(pool_planes, device), row_words,
                        planes * row_words, row_words, src_rows, dst_rows, num_ctas=num_ctas)

    expected = torch.zeros_like(pool)
    for plane, source in enumerate(sources):
        expected[dst_rows, plane] = source[src_rows]
    assert torch.equal(pool, expected)


def test_back_and_forth_restores_the_pages(device: str) -> None:
    planes, row_words = 2, 64
    source = [torch.arange(5 * row_words, dtype=torch.int64, device=device).view(5, row_words)
              + 1000 * plane for plane in range(planes)]
    pool = torch.zeros(4, planes, row_words, dtype=torch.int64, device=device)
    pool_planes = [pool[:, plane] for plane in range(planes)]
    back = [torch.zeros_like(plane) for plane in source]
    to_slots = (torch.tensor([1, 4], device=device), torch.tensor([3, 0], device=device))
    page_copy.copy_rows(bases(source, device), bases(pool_planes, device), row_words,
                        planes * row_words, row_words, *to_slots)
    page_copy.copy_rows(bases(pool_planes, device), bases(back, device), planes * row_words,
                        row_words, row_words, to_slots[1], to_slots[0])
    for plane in range(planes):
        assert torch.equal(back[plane][[1, 4]], source[plane][[1, 4]])
        assert not back[plane][[0, 2, 3]].any()


def test_mismatched_row_lists_are_refused(device: str) -> None:
    table = torch.zeros(1, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="2 source rows against 1"):
        page_copy.copy_rows(table, table, 1, 1, 1, torch.tensor([0, 1], device=device),
                            torch.tensor([0], device=device))
