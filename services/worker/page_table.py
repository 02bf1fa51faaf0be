"""Every request slot's page table, kept on the worker's device.

A batch's page table used to be built on the host each step, one row per request, as long as
its longest request: at batch 1024 with a few hundred tokens per request that is tens of
thousands of integers made, copied and sent every decode step, for tables that change by at
most one page per request per step. Here the rows live on the device; a plan's page-table
writes (and a new request's cached pages) are queued as they are applied and land in one
indexed write before the step's batch is built, and the batch's table is a gather of its
requests' rows.

Invariants: row `slot` holds, from column 0, the pages the request in that slot was given, as
far as its length; past that a row holds stale pages, which no reader uses (every reader
bounds a row by its sequence length). `flush` must run before `gather` reads writes queued
since the last flush.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from radixmesh.services.worker.host_to_device import to_device
from radixmesh.services.worker.request_table import PlanError


class DevicePageTable:
    def __init__(self, max_slots: int, max_pages: int, device: torch.device) -> None:
        self.max_pages = max_pages
        self.rows = torch.zeros(max_slots, max_pages, dtype=torch.int32, device=device)
        self._slots: list[int] = []
        self._columns: list[int] = []
        self._pages: list[int] = []

    def write(self, slot: int, start: int, page_ids: Sequence[int]) -> None:
        """Queues pages `page_ids` for columns start.. of row `slot`."""
        end = start + len(page_ids)
        if end > self.max_pages:
            raise PlanError(f"a page table of {end} pages exceeds the {self.max_pages} a "
                            "request can hold")
        self._slots.extend([slot] * len(page_ids))
        self._columns.extend(range(start, end))
        self._pages.extend(page_ids)

    def flush(self) -> None:
        """Lands the queued writes: one indexed write, queued behind the stream's work."""
        if not self._pages:
            return
        device = self.rows.device
        self.rows.index_put_((to_device(self._slots, torch.int64, device),
                              to_device(self._columns, torch.int64, device)),
                             to_device(self._pages, torch.int32, device))
        self._slots, self._columns, self._pages = [], [], []

    def gather(self, slots: Sequence[int] | torch.Tensor, width: int) -> torch.Tensor:
        """[len(slots), width] int32: those slots' rows, their first `width` pages (`slots` a
        list, or an int64 tensor already on the table's device)."""
        index = slots if isinstance(slots, torch.Tensor) else \
            to_device(list(slots), torch.int64, self.rows.device)
        # Whole rows, then the columns: a gather from the contiguous table, not a strided view.
        return self.rows.index_select(0, index)[:, :width]

    def at(self, slots: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """[N] int32: the page in column `columns[i]` of row `slots[i]` (int64 tensors on the
        table's device): a decode's page, read without the host's copy of the table."""
        return self.rows[slots, columns]
