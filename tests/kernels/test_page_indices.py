"""Flattening a page table into per-row page lists (CPU or GPU)."""

from __future__ import annotations

import torch

from radixmesh.kernels.page_indices import flatten_page_table

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_rows_pages_are_concatenated_in_order():
    page_table = torch.tensor([[5, 6, 7, 0], [9, 0, 0, 0], [1, 2, 3, 4], [0, 0, 0, 0]],
                              dtype=torch.int32, device=DEVICE)
    seq_lens = torch.tensor([33, 1, 64, 1], dtype=torch.int32, device=DEVICE)
    flat = flatten_page_table(page_table, seq_lens, 16, 3 + 1 + 4 + 1)
    assert flat.dtype == torch.int32
    assert flat.tolist() == [5, 6, 7, 9, 1, 2, 3, 4, 0]


def test_matches_a_python_loop_on_random_tables():
    gen = torch.Generator().manual_seed(0)
    for page_size in (1, 3, 16):
        seq_lens = torch.randint(1, 200, (37,), generator=gen, dtype=torch.int32)
        pages = [-(-int(n) // page_size) for n in seq_lens]
        table = torch.randint(1, 10_000, (37, max(pages) + 2), generator=gen, dtype=torch.int32)
        expected = [int(table[i, j]) for i, count in enumerate(pages) for j in range(count)]
        flat = flatten_page_table(table.to(DEVICE), seq_lens.to(DEVICE), page_size, sum(pages))
        assert flat.tolist() == expected


def test_an_empty_batch_gives_no_pages():
    empty = torch.zeros(0, 4, dtype=torch.int32, device=DEVICE)
    lens = torch.zeros(0, dtype=torch.int32, device=DEVICE)
    assert flatten_page_table(empty, lens, 16, 0).numel() == 0


def test_skipped_leading_pages_are_left_out_per_row():
    gen = torch.Generator().manual_seed(1)
    page_size = 16
    seq_lens = torch.randint(1, 300, (29,), generator=gen, dtype=torch.int32)
    pages = [-(-int(n) // page_size) for n in seq_lens]
    # Any count that leaves each row at least its last page.
    skip = [int(torch.randint(0, count, (), generator=gen)) for count in pages]
    table = torch.randint(1, 10_000, (29, max(pages)), generator=gen, dtype=torch.int32)
    expected = [int(table[i, j]) for i, count in enumerate(pages) for j in range(skip[i], count)]
    flat = flatten_page_table(table.to(DEVICE), seq_lens.to(DEVICE), page_size,
                              sum(pages) - sum(skip),
                              torch.tensor(skip, dtype=torch.int32, device=DEVICE))
    assert flat.tolist() == expected
