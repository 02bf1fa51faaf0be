"""Flattens a batch's page table into the concatenated page lists (CSR indices) that FlashInfer's
paged attention takes, on the device and without waiting on it.

Plain torch ops suffice: the output length is the batch's total page count, which the host
already knows from the sequence lengths, so every shape is fixed before launch and nothing
needs boolean-mask indexing or `.item()` (either would stall the host until the GPU catches up).
"""

from __future__ import annotations

import torch


def flatten_page_table(page_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                       total_pages: int, skip_pages: torch.Tensor | None = None) -> torch.Tensor:
    """Row i's pages `page_table[i, skip_pages[i]:ceil(seq_lens[i] / page_size)]` (from column 0
    without `skip_pages`), rows concatenated in order.

    page_table: [B', max_pages] int32 with B' >= B rows; seq_lens, skip_pages: [B] int32 on the
    same device. `total_pages` must equal the sum over rows of the pages listed, each row
    listing at least one. Returns [total_pages] int32.
    """
    device = page_table.device
    pages = (seq_lens.to(torch.int32) + (page_size - 1)) // page_size
    if skip_pages is not None:
        pages = pages - skip_pages.to(torch.int32)
    ends = torch.cumsum(pages, 0, dtype=torch.int32)
    flat = torch.arange(total_pages, dtype=torch.int32, device=device)
    # Entry t belongs to the row whose page range [ends[i] - pages[i], ends[i]) holds t.
    rows = torch.searchsorted(ends, flat, right=True)
    cols = flat - (ends - pages)[rows]
    if skip_pages is not None:
        cols = cols + skip_pages.to(torch.int32)[rows]
    return page_table[rows, cols.long()].to(torch.int32)
