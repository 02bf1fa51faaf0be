"""The fixed index arrays that the FlashInfer backend's captured decode kernels read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from radixmesh.services.worker.forward_batch import ForwardBatch


@dataclass(slots=True)
class GraphBuffers:
    """Sized for the largest graph batch and shared by every size: one size is replayed at a
    time, and every replay is re-planned first. `wrappers` holds each (layer kind, batch size)'s
    decode wrapper, bound to these buffers."""

    max_batch_size: int
    kv_indptr: torch.Tensor         # [max_batch_size + 1] int32
    kv_last_page_len: torch.Tensor  # [max_batch_size] int32
    kv_indices: torch.Tensor | None = None  # sized at the first graph batch (see `check`)
    wrappers: dict[tuple[Any, int], Any] = field(default_factory=dict)

    @classmethod
    def allocate(cls, max_batch_size: int, device: torch.device) -> GraphBuffers:
        return cls(max_batch_size,
                   torch.zeros(max_batch_size + 1, dtype=torch.int32, device=device),
                   torch.ones(max_batch_size, dtype=torch.int32, device=device))

    def check(self, batch: ForwardBatch, total_pages: int, pool_pages: int) -> None:
        """Raises unless `batch` is a graph batch these buffers hold, listing `total_pages`
        pages; sizes the page index buffer at the first one."""
        size = batch.graph_batch_size
        if batch.num_extends or size != batch.batch_size or size > self.max_batch_size:
            raise ValueError(f"a graph batch is {size} decodes, at most {self.max_batch_size}; "
                             f"got {batch.batch_size} rows, {batch.num_extends} extends")
        if self.kv_indices is None:
            # Rows may share pages (cached prefixes), so the pool's page count bounds nothing;
            # each row lists at most its page-table width of pages, and at most the whole pool.
            width = min(batch.page_table.shape[1], pool_pages)
            self.kv_indices = torch.zeros(self.max_batch_size * width, dtype=torch.int32,
                                          device=self.kv_indptr.device)
        if total_pages > self.kv_indices.numel():
            raise RuntimeError(f"graph batch lists {total_pages} pages; its fixed index buffer "
                               f"holds {self.kv_indices.numel()} (page table grew wider)")
