"""Flattens a batch's page table into the concatenated page lists (CSR indices) that FlashInfer's
paged attention takes, on the device and without waiting on it.

Plain torch ops suffice: the output length is the batch's total page count, which the host
already knows from the sequence lengths, so every shape is fixed before launch and nothing
needs boolean-mask indexing or `.item()` (either would stall the host until the GPU catches up).
"""

from __future__ import annotations

import torch


def flatten_page_table(page_table: torch.Tensor, seq_lens: torch.Tensor, page_size: int,
                       total_pages: int) -> torch.Tensor:
    """Row i's pages `page_table[i, :ceil(seq_lens[i] / page_size)]`, rows concatenated in order.

    page_table: [B', max_pages] int32 with B' >= B rows; seq_lens: [B] int32 on the same device.
    `total_pages` must equal the sum over rows of ceil(seq_lens[i] / page_size), with every
    seq_lens[i] >= 1. Returns [total_pages] int32.
    """
    device = page_table.device
    pages = (seq_lens.to(torch.int32) + (page_size - 1)) // page_size
    ends = torch.cumsum(pages, 0, dtype=torch.int32)
    flat = torch.arange(total_pages, dtype=torch.int32, device=device)
    # Entry t belongs to the row whose page range [ends[i] - pages[i], ends[i]) holds t.
    rows = torch.searchsorted(ends, flat, right=True)
    cols = (flat - (ends - pages)[rows]).long()
    return page_table[rows, cols].to(torch.int32)
