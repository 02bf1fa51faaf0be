"""The device page table holds each slot's pages as the plans wrote them, one indexed write per
flush, and a batch's table is a gather of its slots' rows."""

from __future__ import annotations

import pytest
import torch

from radixmesh.services.worker.page_table import DevicePageTable
from radixmesh.services.worker.request_table import PlanError


def test_writes_land_at_flush_and_gather_by_slot() -> None:
    table = DevicePageTable(max_slots=4, max_pages=6, device=torch.device("cpu"))
    table.write(2, 0, [7, 8, 9])
    table.write(0, 0, [1])
    assert not table.rows.any()  # queued, not landed
    table.flush()
    table.write(2, 3, [10])       # a decode's new page
    table.write(2, 1, [11])       # a remap of an existing one
    table.flush()
    assert table.gather([2, 0], 4).tolist() == [[7, 11, 9, 10], [1, 0, 0, 0]]
    assert table.gather([0], 1).dtype == torch.int32


def test_a_table_longer_than_a_request_can_hold_is_a_plan_error() -> None:
    table = DevicePageTable(max_slots=1, max_pages=2, device=torch.device("cpu"))
    with pytest.raises(PlanError, match="3 pages exceeds the 2"):
        table.write(0, 1, [5, 6])
