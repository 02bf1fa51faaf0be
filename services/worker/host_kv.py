"""Moves whole KV pages between the device pool (L1) and the host pool (L2) that the hicache
service shares with this worker (design §4): loads before a step's forward pass, backups after.

A host slot holds one page of every layer, K then V, so layer i of a slot is one row of K and
one of V, as a device page of layer i is one row of its K buffer and one of its V buffer. Every
copy moves such rows, viewed as the widest integer words their length allows: a copy moves
bytes, never values, so the KV dtype does not matter and wider accesses move them faster.

On a CPU worker the copies are plain tensor copies, done when called. On CUDA the pool is pinned
and its memory mapped into the device's address space, so a copy is a kernel on a copy stream
that reads or writes host memory itself, with no host thread moving bytes (`page_rows.py` says
which kernels):
- loads: one event per layer; the forward pass waits for layer i's event just before layer i's
  attention reads the KV cache (`ForwardBatch.wait_for_layer`), so it waits only for that copy;
- backups: the pages are gathered in stream order with the steps, then written to host memory
  on the copy stream, one event per step; `backed_up_through` only queries events, so a step's
  result never waits for its backups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from radixmesh.services.worker.host_to_device import to_device
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.page_rows import (
    KernelRows,
    TorchRows,
    as_words,
    device_rows,
    make_rows,
)
from radixmesh.services.worker.request_table import PlanError
from radixmesh.shared.host_pool import HostPool, HostPoolError, HostPoolLayout
from radixmesh.shared.step import HostPoolAttachment, PageCopies, StepPlan

_WORDS = (torch.int64, torch.int32, torch.int16, torch.uint8)


def check_copies(plan: StepPlan, num_pages: int, num_slots: int) -> None:
    """Raises PlanError unless every load and backup pairs a grantable device page (1..num_pages)
    with a slot of the mapped host pool (1..num_slots; 0: none is mapped), and no copy writes a
    page or slot another copy of the step writes. Run before anything moves: a bad plan moves
    no byte."""
    for kind, copies, written in (("load", plan.loads, plan.loads.device_pages),
                                  ("backup", plan.backups, plan.backups.host_slots)):
        if not copies:
            continue
        if num_slots < 1:
            raise PlanError(f"step {plan.step_id} plans {len(copies)} page {kind}s but no host "
                            "pool is mapped")
        for name, ids, last in (("device page", copies.device_pages, num_pages),
                                ("host slot", copies.host_slots, num_slots)):
            bad = [i for i in ids if not 1 <= i <= last]
            if bad:
                raise PlanError(f"step {plan.step_id}: {kind} {name}s {bad} are out of range "
                                f"[1, {last}]")
        if len(set(written)) != len(written):
            raise PlanError(f"step {plan.step_id}: two {kind}s write the same place: {written}")


def pool_layout(kv_pool: KVPool, num_slots: int, tp_size: int = 1) -> HostPoolLayout:
    """The layout of a host pool of slots 1..num_slots for `kv_pool`'s pages (one rank's, of a
    group of `tp_size`). Slot 0 is never granted (like device page 0) but exists, so slot ids
    index the pool directly."""
    return HostPoolLayout(num_slots=num_slots + 1, num_layers=kv_pool.num_layers,
                          page_size=kv_pool.page_size, num_kv_heads=kv_pool.num_kv_heads,
                          head_dim=kv_pool.head_dim, dtype=kv_pool.dtype_name, tp_size=tp_size)


class PendingLoads:
    """One step's loads. `wait_for_layer(i)` makes the current stream wait until layer i's pages
    have landed; a no-op where the copies were done when queued (a CPU worker, no loads)."""

    def __init__(self, layer_events: list[torch.cuda.Event] | None = None) -> None:
        self._events = layer_events or []

    def wait_for_layer(self, layer_id: int) -> None:
        if self._events:
            torch.cuda.current_stream().wait_event(self._events[layer_id])

    def wait_all(self) -> None:
        """For a pass that has no per-layer hook (a replayed CUDA graph) or no pass at all."""
        if self._events:  # the copy stream runs the layers in order: the last event covers all
            torch.cuda.current_stream().wait_event(self._events[-1])


NO_LOADS = PendingLoads()


class HostKV:
    """Page copies between `kv_pool` and the mapped host pool, as step plans order them."""

    def __init__(self, kv_pool: KVPool, kernels: bool = True, tp_rank: int = 0,
                 tp_size: int = 1) -> None:
        """`kernels`: move rows with the page-copy kernels where they can run (False: with
        torch ops everywhere, for comparison). Under tensor parallelism `kv_pool` holds rank
        `tp_rank`'s KV heads, and its copies touch that rank's part of each host slot only."""
        self.kv_pool = kv_pool
        self._kernels = kernels
        self._tp_rank, self._tp_size = tp_rank, tp_size
        self.num_slots = 0  # slot ids 1..num_slots of the mapped pool; 0: none mapped
        self._pool: HostPool | None = None
        self._rows: TorchRows | KernelRows | None = None  # moves rows to and from the pool
        self._stream = (torch.cuda.Stream(kv_pool.device) if kv_pool.device.type == "cuda"
                        else None)
        self._pending: deque[tuple[int, torch.cuda.Event]] = deque()  # backups in flight
        self._newest_step = 0

    def attach(self, attachment: HostPoolAttachment) -> None:
        """Maps (and on CUDA pins) the pool named by `attachment`, dropping any earlier mapping;
        an empty name only drops it. Always maps afresh: a restarted hicache service may have
        created a new segment under the old name."""
        self._detach()
        if not attachment.name:
            return
        host = HostPool.attach(attachment.name, pool_layout(self.kv_pool, attachment.num_slots,
                                                            self._tp_size))
        try:
            host_rows = self._copy_visible_rows(host)
            rows = device_rows(self.kv_pool, host_rows.dtype)
            self._rows = (make_rows(rows, host_rows) if self._kernels
                          else TorchRows(rows, host_rows))
        except BaseException:
            host.close()
            raise
        self._pool, self.num_slots = host, attachment.num_slots

    def check(self, plan: StepPlan) -> None:
        """`check_copies` against this pool; call it after `attach`, before anything moves."""
        check_copies(plan, self.kv_pool.num_pages, self.num_slots)

    def load(self, copies: PageCopies) -> PendingLoads:
        """Queues host slots -> device pages, every layer K and V, layer by layer."""
        if not copies:
            return NO_LOADS
        events = []
        with self._copy_stream() as stream:
            pages, slots = self._indices(copies)
            assert self._rows is not None, "check() the plan before loading"
            for layer in range(self.kv_pool.num_layers):
                self._rows.load_layer(layer, pages, slots)
                if stream is not None:
                    events.append(stream.record_event())
        return PendingLoads(events)

    def backup(self, step_id: int, copies: PageCopies) -> None:
        """Reads the pages of `copies` now, before anything queued later can write them (the
        plan that carries a backup may grant its pages again), and queues their bytes to the
        host slots; notes step `step_id`, which counts even without backups."""
        if step_id <= self._newest_step:
            # Step ids grow within one scheduler's stream, so a smaller one starts another (the
            # servicer's release-only step -1, a restarted scheduler): the old stream's backups
            # are waited for here, rarely, so that the new count starts clean.
            self._drain()
        self._newest_step = step_id
        if not copies:
            return
        assert self._rows is not None, "check() the plan before backing up"
        pages, slots = self._indices(copies)
        # The gather runs in stream order with the steps (a device-to-device copy, cheap); only
        # the copy of the gathered rows to host memory runs beside them.
        staged = self._rows.stage(pages)
        with self._copy_stream() as stream:
            self._rows.store(staged, slots)
            if stream is not None:
                staged.record_stream(stream)  # the allocator keeps it until the copy is done
                slots.record_stream(stream)
                self._pending.append((step_id, stream.record_event()))

    @property
    def backed_up_through(self) -> int:
        """The newest step whose backups, and every earlier step's, are all in host memory."""
        while self._pending and self._pending[0][1].query():
            self._pending.popleft()
        return self._pending[0][0] - 1 if self._pending else self._newest_step

    def close(self) -> None:
        """Waits for copies in flight and unmaps the pool. Idempotent."""
        self._detach()

    def _detach(self) -> None:
        self._drain()  # no copy may touch the mapping once it is gone
        self._rows = None
        self.num_slots = 0
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()

    def _drain(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()
        self._pending.clear()

    def _copy_visible_rows(self, host: HostPool) -> torch.Tensor:
        """This rank's part of the pool as [slot, layer, K/V, word] rows the copies can index
        (slots lie tp_size parts apart): the mapping itself on a CPU worker; on CUDA, the
        pinned mapping seen from the device."""
        if self._stream is None:
            return _as_rows(host.tensor())[:, self._tp_rank]
        with torch.cuda.device(self.kv_pool.device):  # registered for, and mapped into, ours
            host.pin()
            device = torch.device("cuda", torch.cuda.current_device())
            return _as_rows(_device_alias(host.tensor(), device))[:, self._tp_rank]

    def _indices(self, copies: PageCopies) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.kv_pool.device
        return (to_device(copies.device_pages, torch.int64, device),
                to_device(copies.host_slots, torch.int64, device))

    @contextmanager
    def _copy_stream(self) -> Iterator[torch.cuda.Stream | None]:
        """Runs the block on the copy stream, behind everything queued on the current stream
        (a previous step may still read or write the pages); on a CPU worker, just runs it."""
        if self._stream is None:
            yield None
            return
        self._stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self._stream):
            yield self._stream


def _as_rows(pages: torch.Tensor) -> torch.Tensor:
    """[..., page_size, kv_heads, head_dim] -> [..., words]: each page of one layer's K (or V)
    as one row of the widest integer words that divide it."""
    row_bytes = pages.shape[-3:].numel() * pages.element_size()
    return as_words(pages, next(word for word in _WORDS if row_bytes % word.itemsize == 0))


class _HostMemory:
    """Host memory presented to torch as device memory (the CUDA array interface)."""

    def __init__(self, pointer: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "strides": None,
                                         "data": (pointer, False), "version": 2}


def _device_alias(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A device tensor over the bytes of `host`, which must be pinned (cudaHostRegister maps
    pinned memory into the device's unified address space): kernels then read and write the
    host pool directly."""
    pointer, nbytes = host.data_ptr(), host.numel() * host.element_size()
    alias = torch.as_tensor(_HostMemory(pointer, nbytes), device=device)
    if alias.data_ptr() != pointer:  # torch copied it rather than map it: no use to us
        raise HostPoolError(f"cannot map the host pool into {device}'s address space")
    return alias.view(host.dtype).view(host.shape)
