"""Cascade attention on FlashInfer: a decode batch's shared prefixes read once per group.

A decode row of a prefix group (prefix_groups.py) attends in two levels: its group's shared
pages, with every row of the group as one multi-query "prefill" request over those pages (the
pages are read once for the group, its rows' queries riding along), and its own remaining
pages, with the ordinary decode kernel. Each level gives a partial output and its log-sum-exp,
which FlashInfer's merge combines into exactly the attention over all pages (up to summation
order). Rows outside any group take the decode level alone, over all their pages.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING, Any

import torch

from radixmesh.kernels.page_indices import flatten_page_table
from radixmesh.services.worker.attention.flashinfer_builds import prefill_backend
from radixmesh.services.worker.host_to_device import to_device
from radixmesh.services.worker.prefix_groups import PrefixGroups

if TYPE_CHECKING:  # flashinfer_backend imports this module
    from radixmesh.services.worker.attention.flashinfer_backend import LayerKind
    from radixmesh.services.worker.forward_batch import ForwardBatch
    from radixmesh.services.worker.kv_pool import KVPool


@dataclass(frozen=True, slots=True)
class SharedLevel:
    """The groups' shared pages as FlashInfer's prefill plan takes them."""

    qo_indptr: torch.Tensor         # [G + 1] int32 on the host: each group's query rows
    kv_indptr: torch.Tensor         # [G + 1] int32 on the host
    kv_indices: torch.Tensor        # [sum of shared pages] int32 on the device
    kv_last_page_len: torch.Tensor  # [G] int32 on the host: shared pages are full
    members: torch.Tensor | None    # [M] int64 on the device: grouped rows; None: every row


class CascadeLevels:
    """Builds, plans and runs the shared level; the backend keeps the decode level."""

    def __init__(self, flashinfer: Any, workspace: torch.Tensor, kv_pool: KVPool) -> None:
        self._flashinfer = flashinfer
        self._workspace = workspace
        self._kv_pool = kv_pool
        self._wrappers: dict[LayerKind, Any] = {}
        self.enabled = False

    def enable(self) -> None:
        """Builds the merge kernel (FlashInfer builds it on first use) now, at start-up."""
        device = self._workspace.device
        states = [torch.zeros(1, 1, 64, dtype=self._kv_pool.compute_dtype, device=device),
                  torch.zeros(1, 1, dtype=torch.float32, device=device)]
        self._flashinfer.merge_state_in_place(*states, *(state.clone() for state in states))
        self.enabled = True

    def plan(self, kind: LayerKind, level: SharedLevel) -> Any:
        pool = self._kv_pool
        wrapper = self._wrappers.get(kind)
        if wrapper is None:
            # fa2 for an FP8 cache, as the backend's own prefill (fa3 wants one dtype).
            wrapper = self._flashinfer.BatchPrefillWithPagedKVCacheWrapper(
                self._workspace, "NHD", backend=prefill_backend(False, pool.is_fp8))
            self._wrappers[kind] = wrapper
        wrapper.plan(level.qo_indptr, level.kv_indptr, level.kv_indices, level.kv_last_page_len,
                     kind.num_heads, pool.num_kv_heads, pool.head_dim, pool.page_size,
                     causal=False, sm_scale=kind.sm_scale, q_data_type=pool.compute_dtype,
                     kv_data_type=pool.dtype)
        return wrapper

    def run(self, decode: Any, shared: Any, level: SharedLevel, query: torch.Tensor,
            cache: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor,
            scales: dict[str, torch.Tensor]) -> None:
        """Both levels into `out` ([rows, heads, head_dim]); `decode` is planned over every
        row's pages past its shared ones."""
        _, lse = decode.run(query, cache, out=out, return_lse=True, **scales)
        members = level.members
        grouped = query if members is None else query.index_select(0, members)
        shared_out, shared_lse = shared.run(grouped, cache, return_lse=True, **scales)
        if members is None:
            self._flashinfer.merge_state_in_place(out, lse, shared_out, shared_lse)
            return
        part, part_lse = out.index_select(0, members), lse.index_select(0, members)
        self._flashinfer.merge_state_in_place(part, part_lse, shared_out, shared_lse)
        out.index_copy_(0, members, part)


def split_levels(batch: ForwardBatch, groups: PrefixGroups, pages: list[int], page_size: int
                 ) -> tuple[SharedLevel, torch.Tensor, list[int]]:
    """The shared level of a decode batch whose rows hold `pages` pages; each row's shared
    page count on the device and its page count past them (the decode level's)."""
    device = batch.page_table.device
    leaders = groups.leaders
    row_shared = groups.row_shared_pages(batch.batch_size)
    skip, leader_rows, shared_lens = to_device(
        row_shared + leaders + [n * page_size for n in groups.shared_pages],
        torch.int32, device).split([batch.batch_size, len(leaders), len(leaders)])
    kv_indices = flatten_page_table(batch.page_table.index_select(0, leader_rows.long()),
                                    shared_lens, page_size, sum(groups.shared_pages))
    members = (None if groups.covers(batch.batch_size)
               else to_device(groups.members, torch.int64, device))
    level = SharedLevel(
        qo_indptr=torch.tensor(groups.qo_indptr, dtype=torch.int32),
        kv_indptr=torch.tensor(list(accumulate(groups.shared_pages, initial=0)),
                               dtype=torch.int32),
        kv_indices=kv_indices,
        kv_last_page_len=torch.full((len(leaders),), page_size, dtype=torch.int32),
        members=members)
    own = [count - shared for count, shared in zip(pages, row_shared, strict=True)]
    return level, skip, own


def cascade_applies(batch: ForwardBatch, kinds: Iterable[LayerKind]) -> bool:
    """Cascade runs on eager decode batches of a model whose layers were all met (`kinds`: a
    first pass plans kinds as it meets them) and have no sliding window (a shared prefix may
    lie partly outside one)."""
    kinds = list(kinds)
    return (batch.num_extends == 0 and batch.graph_batch_size is None and bool(kinds)
            and all(kind.window_left < 0 for kind in kinds))

