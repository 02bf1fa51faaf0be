"""Decode rows that share a prompt prefix, found so attention can read each shared prefix once.

In shared-prefix traffic (many requests behind one long system prompt) a decode step re-reads
every group's prefix KV once per member: at 16 members a group costs 16 reads of pages that one
would do. `PrefixGrouper` finds, per step, runs of adjacent decodes whose page tables begin with
the same pages (the scheduler lists decodes by first page, so a group's members are adjacent)
and how many leading full pages each run shares. A backend that supports it (FlashInfer) then
attends over the shared pages once per group and over each row's own pages apart, and merges
the two partial results: the same attention, summed in another order.

A shared page is one both page tables name and that is full before the step: the page a row
writes this step is never shared (it is the row's own), and a page of the radix cache is the
same physical page in every request that holds it, so sharing is equality of page ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import accumulate
from operator import eq
from typing import TYPE_CHECKING

from radixmesh.services.worker.request_state import WorkerRequest

if TYPE_CHECKING:
    from radixmesh.services.worker.attention.base import AttentionBackend

logger = logging.getLogger(__name__)

# Smallest group worth a level of its own, and the least share of a step's decode pages that
# grouping must save: below either, the extra kernels per layer and running without a CUDA
# graph cost more than the reads saved.
MIN_GROUP_SIZE = 4
MIN_SAVED_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class PrefixGroups:
    """Groups of adjacent decode rows (row numbers count decodes only, in batch order)."""

    bounds: list[tuple[int, int]]  # group g is decode rows bounds[g][0] .. bounds[g][1] - 1
    shared_pages: list[int]        # [G]: leading pages all of group g's rows share, each >= 1

    @property
    def members(self) -> list[int]:
        """The rows in groups, ascending: the shared level's query rows."""
        return [row for begin, end in self.bounds for row in range(begin, end)]

    @property
    def leaders(self) -> list[int]:
        """A row of each group, whose page table lists the group's shared pages."""
        return [begin for begin, _ in self.bounds]

    @property
    def qo_indptr(self) -> list[int]:
        """Group boundaries within `members`."""
        return list(accumulate((end - begin for begin, end in self.bounds), initial=0))

    def row_shared_pages(self, num_decodes: int) -> list[int]:
        """Each decode row's group's shared pages; 0 outside groups."""
        pages = [0] * num_decodes
        for (begin, end), shared in zip(self.bounds, self.shared_pages, strict=True):
            pages[begin:end] = [shared] * (end - begin)
        return pages

    def covers(self, num_decodes: int) -> bool:
        """Whether every decode row is in a group."""
        return sum(end - begin for begin, end in self.bounds) == num_decodes


class PrefixGrouper:
    """Finds a step's prefix groups. The common length of two requests' page tables changes
    only while one is still being filled, so it is kept between steps per (leader, member)
    and recomputed only while it may still grow. Keys are the request objects themselves (held
    for one step only): a finished request's id can come back with a new request."""

    def __init__(self, page_size: int, min_group_size: int = MIN_GROUP_SIZE,
                 min_saved_share: float = MIN_SAVED_SHARE) -> None:
        self.page_size = page_size
        self.min_group_size = min_group_size
        self.min_saved_share = min_saved_share
        self._common: dict[tuple[WorkerRequest, WorkerRequest], int] = {}

    def find(self, decodes: list[WorkerRequest], decode_starts: list[int]) -> PrefixGroups | None:
        """`decode_starts[i]`: decode i's KV length before the step. None when grouping would
        not pay (see MIN_GROUP_SIZE, MIN_SAVED_SHARE)."""
        firsts = [req.page_table[0] if req.page_table else -1 for req in decodes]
        # Most batches share nothing: a count in C says so before any per-row work.
        if sum(map(eq, firsts, firsts[1:])) < self.min_group_size - 1:
            self._common.clear()
            return None
        full_pages = [start // self.page_size for start in decode_starts]
        common: dict[tuple[WorkerRequest, WorkerRequest], int] = {}
        bounds: list[tuple[int, int]] = []
        shared_pages: list[int] = []
        saved = 0
        begin = 0
        for end in range(1, len(decodes) + 1):
            if end < len(decodes) and firsts[end] == firsts[begin]:
                continue
            if end - begin >= self.min_group_size:
                shared = self._shared(decodes, full_pages, begin, end, common)
                if shared > 0:
                    bounds.append((begin, end))
                    shared_pages.append(shared)
                    saved += (end - begin - 1) * shared
            begin = end
        self._common = common
        total_pages = sum(full_pages) + len(decodes)  # each row's full pages and the one it writes
        if not shared_pages or saved < self.min_saved_share * total_pages:
            return None
        return PrefixGroups(bounds, shared_pages)

    def _shared(self, decodes: list[WorkerRequest], full_pages: list[int], begin: int, end: int,
                common: dict[tuple[WorkerRequest, WorkerRequest], int]) -> int:
        """Leading full pages that rows begin..end-1 all share."""
        leader = decodes[begin]
        shared = full_pages[begin]
        for row in range(begin + 1, end):
            member = decodes[row]
            key = (leader, member)
            length = self._common.get(key)
            # A kept length is final once it stops short of either table's full pages.
            if length is None or length >= min(full_pages[begin], full_pages[row]):
                length = _common_length(leader.page_table, member.page_table,
                                        min(full_pages[begin], full_pages[row]))
            common[key] = length
            shared = min(shared, length)
        return shared


def _common_length(a: list[int], b: list[int], limit: int) -> int:
    """How many leading entries of a and b agree, at most `limit`."""
    if a[:limit] == b[:limit]:
        return limit
    low, high = 0, limit  # a[:low] == b[:low], a[:high] != b[:high]: halve with list compares
    while high - low > 1:
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low



def make_prefix_grouper(enabled: bool, backend: AttentionBackend, page_size: int
                        ) -> PrefixGrouper | None:
    """The worker's grouper under --enable-cascade-attn, where the backend reads groups."""
    if not enabled:
        return None
    if not backend.supports_prefix_groups:
        logger.warning("--enable-cascade-attn is ignored: the %s attention backend reads every "
                       "row's pages", backend.name)
        return None
    backend.enable_prefix_groups()
    return PrefixGrouper(page_size)
