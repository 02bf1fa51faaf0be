"""Turns the requests of one step into a flat ForwardBatch of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate, chain
from typing import TYPE_CHECKING

import torch

from radixmesh.services.worker.attention.base import AttentionBackend
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.host_to_device import to_device
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.request_state import WorkerRequest

if TYPE_CHECKING:  # page_table.py needs the request table, which needs this module
    from radixmesh.services.worker.page_table import DevicePageTable
    from radixmesh.services.worker.prefix_groups import PrefixGrouper


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """Compute tokens [start, start + length) of `req`; `sample` asks for the next token."""

    req: WorkerRequest
    start: int
    length: int
    sample: bool


@dataclass(slots=True)
class StepRows:
    """One step's work on the worker: extends in plan order, then decodes.

    A decode is one token at position `decode_starts[i]` of `decodes[i]`, always sampled. Decodes
    are kept as plain lists, not entries: at batch 1024 an object per row per step is most of
    the worker's host time.
    """

    extends: list[BatchEntry] = field(default_factory=list)
    decodes: list[WorkerRequest] = field(default_factory=list)
    decode_starts: list[int] = field(default_factory=list)  # KV length before the step

    def __len__(self) -> int:
        return len(self.extends) + len(self.decodes)

    @property
    def sampled(self) -> list[WorkerRequest]:
        """The requests that draw a token this step, in plan order."""
        drawing = [entry.req for entry in self.extends if entry.sample]
        return drawing + self.decodes if drawing else self.decodes


@dataclass(slots=True)
class _Part:
    """The flat tensors of one kind of row (extends or decodes)."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    slots: torch.Tensor  # [B] int64: each row's request slot
    logits_indices: torch.Tensor
    seq_lens: list[int]
    extend_lens: list[int]


def build_forward_batch(rows: StepRows, kv_pool: KVPool, backend: AttentionBackend,
                        last_tokens: torch.Tensor, page_table: DevicePageTable,
                        grouper: PrefixGrouper | None = None) -> ForwardBatch:
    """Extends read their tokens from the host; a decode's one input is its request's latest
    sampled token, which may still be only on the device: it is gathered from `last_tokens`
    (indexed by request slot), so no host sync is needed. The batch's page table is gathered
    from `page_table`'s rows (flushed here first). A decode batch's prefix groups come from
    `grouper`, where the backend reads shared prefixes once."""
    page_table.flush()
    parts = []
    if rows.extends:
        parts.append(_extend_part(rows.extends, kv_pool.page_size, last_tokens.device))
    if rows.decodes:
        num_extend_tokens = parts[0].positions.shape[0] if parts else 0
        parts.append(_decode_part(rows, num_extend_tokens, kv_pool.page_size, last_tokens,
                                  page_table))

    def joined(name: str) -> torch.Tensor:
        tensors = [getattr(part, name) for part in parts]
        return tensors[0] if len(tensors) == 1 else torch.cat(tensors)

    seq_lens = list(chain.from_iterable(part.seq_lens for part in parts))
    extend_lens = list(chain.from_iterable(part.extend_lens for part in parts))
    extend_starts = list(accumulate(extend_lens, initial=0))[:-1]
    # One host-to-device copy for the three.
    seq_lens_t, extend_lens_t, extend_starts_t = to_device(
        seq_lens + extend_lens + extend_starts, torch.int32, last_tokens.device).view(3, -1).unbind()
    max_pages = -(-max(seq_lens) // kv_pool.page_size)
    return ForwardBatch(
        mode=ForwardMode.of(len(rows.extends), len(rows.decodes)),
        input_ids=joined("input_ids"),
        positions=joined("positions"),
        out_cache_loc=joined("out_cache_loc"),
        seq_lens=seq_lens_t,
        extend_lens=extend_lens_t,
        extend_starts=extend_starts_t,
        page_table=page_table.gather(joined("slots"), max_pages),
        logits_indices=joined("logits_indices"),
        seq_lens_cpu=seq_lens,
        extend_lens_cpu=extend_lens,
        num_extends=len(rows.extends),
        attn_backend=backend,
        kv_pool=kv_pool,
        prefix_groups=(grouper.find(rows.decodes, rows.decode_starts)
                       if grouper is not None and not rows.extends else None),
    )


def _extend_part(entries: list[BatchEntry], page_size: int, device: torch.device) -> _Part:
    """Per token on the host: an extend's tokens and page slots are there anyway."""
    positions: list[int] = []
    cache_locs: list[int] = []
    logits_indices: list[int] = []
    for entry in entries:
        span = range(entry.start, entry.start + entry.length)
        positions.extend(span)
        table = entry.req.page_table
        cache_locs.extend(table[pos // page_size] * page_size + pos % page_size for pos in span)
        if entry.sample:
            logits_indices.append(len(positions) - 1)
    token_ids = [token for entry in entries
                 for token in entry.req.token_ids[entry.start:entry.start + entry.length]]
    return _Part(
        input_ids=to_device(token_ids, torch.int64, device),
        positions=to_device(positions, torch.int64, device),
        out_cache_loc=to_device(cache_locs, torch.int64, device),
        slots=to_device([entry.req.slot for entry in entries], torch.int64, device),
        logits_indices=to_device(logits_indices, torch.int64, device),
        seq_lens=[entry.start + entry.length for entry in entries],
        extend_lens=[entry.length for entry in entries])


def _decode_part(rows: StepRows, first_token: int, page_size: int, last_tokens: torch.Tensor,
                 page_table: DevicePageTable) -> _Part:
    """Vectorised from two host lists (slots, positions): each decode's KV slot is read off
    the device page table, which mirrors the host's."""
    device = last_tokens.device
    count = len(rows.decodes)
    slots, positions = to_device([req.slot for req in rows.decodes] + rows.decode_starts,
                                 torch.int64, device).view(2, count).unbind()
    pages = page_table.at(slots, positions // page_size)  # int32: the sum below is int64
    return _Part(
        input_ids=last_tokens.index_select(0, slots),
        positions=positions,
        out_cache_loc=positions % page_size + pages * page_size,
        slots=slots,
        logits_indices=torch.arange(first_token, first_token + count, device=device),
        seq_lens=[start + 1 for start in rows.decode_starts],
        extend_lens=[1] * count)
