"""Turns the requests of one step into a flat ForwardBatch of tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from radixmesh.services.worker.attention.base import AttentionBackend
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.host_to_device import to_device
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.request_state import WorkerRequest

if TYPE_CHECKING:  # page_table.py needs the request table, which needs this module
    from radixmesh.services.worker.page_table import DevicePageTable


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """Compute tokens [start, start + length) of `req`; `sample` asks for the next token."""

    req: WorkerRequest
    start: int
    length: int
    sample: bool


def build_forward_batch(entries: list[BatchEntry], num_extends: int, kv_pool: KVPool,
                        backend: AttentionBackend, last_tokens: torch.Tensor,
                        page_table: DevicePageTable) -> ForwardBatch:
    """Extends (`entries[:num_extends]`) read their tokens from the host; a decode's one input
    is its request's latest sampled token, which may still be only on the device: it is
    gathered from `last_tokens` (indexed by request slot), so no host sync is needed. The
    batch's page table is gathered from `page_table`'s rows (flushed here first)."""
    device = last_tokens.device
    page_size = kv_pool.page_size
    positions: list[int] = []
    slots: list[int] = []
    logits_indices: list[int] = []
    extend_starts: list[int] = []
    for entry in entries:
        req, start, end = entry.req, entry.start, entry.start + entry.length
        extend_starts.append(len(positions))
        span = range(start, end)
        positions.extend(span)
        table = req.page_table
        slots.extend(table[pos // page_size] * page_size + pos % page_size for pos in span)
        if entry.sample:
            logits_indices.append(len(positions) - 1)
    seq_lens = [entry.start + entry.length for entry in entries]
    max_pages = max(-(-n // page_size) for n in seq_lens)
    page_table.flush()
    mode = ForwardMode.of(num_extends, len(entries) - num_extends)

    def as_tensor(values: list, dtype: torch.dtype) -> torch.Tensor:
        return to_device(values, dtype, device)

    extend_ids = [token for entry in entries[:num_extends]
                  for token in entry.req.token_ids[entry.start:entry.start + entry.length]]
    decode_slots = [entry.req.slot for entry in entries[num_extends:]]
    parts = []
    if extend_ids:
        parts.append(as_tensor(extend_ids, torch.int64))
    if decode_slots:
        parts.append(last_tokens.index_select(0, as_tensor(decode_slots, torch.int64)))
    return ForwardBatch(
        mode=mode,
        input_ids=parts[0] if len(parts) == 1 else torch.cat(parts),
        positions=as_tensor(positions, torch.int64),
        out_cache_loc=as_tensor(slots, torch.int64),
        seq_lens=as_tensor(seq_lens, torch.int32),
        extend_lens=as_tensor([entry.length for entry in entries], torch.int32),
        extend_starts=as_tensor(extend_starts, torch.int32),
        page_table=page_table.gather([entry.req.slot for entry in entries], max_pages),
        logits_indices=as_tensor(logits_indices, torch.int64),
        seq_lens_cpu=seq_lens,
        extend_lens_cpu=[entry.length for entry in entries],
        num_extends=num_extends,
        attn_backend=backend,
        kv_pool=kv_pool,
    )
