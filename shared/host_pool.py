"""L2: KV pages in shared host memory, created by the hicache service and mapped by the worker.

The pool is one POSIX shared memory segment of `num_slots` slots; a slot holds one page of every
layer, K then V, so a slot is contiguous bytes (the unit the service reads from and writes to
L3) and the worker sees the same bytes as one tensor, with no copy in between.

Lifetimes: the creator (the hicache service) owns the name and unlinks it on close; an attacher
(the worker) only maps it. Python < 3.13 registers every mapping with the process's resource
tracker, which would unlink the segment under the creator when the attacher exits; `attach`
undoes that. The attacher must be a process of its own (the mesh's services are), not a
multiprocessing child sharing its parent's tracker.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, fields
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from types import TracebackType

import numpy as np
import torch

from radixmesh.shared.errors import RadixMeshError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
SHM_DIR = Path("/dev/shm")
_CUDA_HOST_REGISTER_PORTABLE = 1  # pinned for every CUDA context of the process, not just one
# Segments this process created: attaching to one of them here must leave the creator's
# resource-tracker registration alone.
_CREATED_HERE: set[str] = set()


class HostPoolError(RadixMeshError):
    """The shared host pool cannot be created, mapped or released as asked."""


@dataclass(frozen=True, slots=True)
class HostPoolLayout:
    """The shape both sides must agree on; the bytes mean nothing without it."""

    num_slots: int
    num_layers: int
    page_size: int
    num_kv_heads: int  # per tensor-parallel rank
    head_dim: int
    dtype: str
    # A slot holds every tensor-parallel rank's part of a page, rank after rank, so each rank
    # copies one contiguous part and the slot stays the unit of L3.
    tp_size: int = 1

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name != "dtype" and value < 1:
                raise ValueError(f"{field.name} must be >= 1, got {value}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unsupported dtype {self.dtype!r}; supported: {', '.join(DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> tuple[int, int, int, int, int, int, int]:
        """[slot, tensor-parallel rank, layer, K/V, token in page, kv head, head dim]."""
        return (self.num_slots, self.tp_size, self.num_layers, 2, self.page_size,
                self.num_kv_heads, self.head_dim)

    @property
    def kv_page_bytes(self) -> int:
        """Bytes of one page's K in one layer; its V takes as many."""
        return self.page_size * self.num_kv_heads * self.head_dim * self.torch_dtype.itemsize

    @property
    def bytes_per_slot(self) -> int:
        return self.tp_size * self.num_layers * 2 * self.kv_page_bytes

    @property
    def total_bytes(self) -> int:
        return self.num_slots * self.bytes_per_slot


def _check_shm_room(nbytes: int) -> None:
    # tmpfs hands out pages lazily: an oversized segment is created without complaint and the
    # process dies of SIGBUS when it first touches a page past the limit. Refuse it up front.
    if SHM_DIR.is_dir():
        free = shutil.disk_usage(SHM_DIR).free
        if nbytes > free:
            raise HostPoolError(f"the host pool needs {nbytes} bytes of shared memory but "
                                f"{SHM_DIR} has {free} free (in docker, raise --shm-size)")


def _open_untracked(name: str) -> SharedMemory:
    """Maps an existing segment without letting this process's exit unlink it."""
    if sys.version_info >= (3, 13):
        return SharedMemory(name, track=False)
    shm = SharedMemory(name)
    if name not in _CREATED_HERE:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    return shm


def pin(tensor: torch.Tensor) -> Callable[[], None] | None:
    """Page-locks `tensor`'s memory so copies to the GPU run asynchronously at full speed.

    Returns the call that unpins it, or None without CUDA (nothing to pin for). The memory must
    stay mapped until that call.
    """
    if not torch.cuda.is_available():
        return None
    if not tensor.is_contiguous():
        raise ValueError("only a contiguous tensor's memory can be pinned")
    cudart = torch.cuda.cudart()
    pointer, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
    try:
        torch.cuda.check_error(
            cudart.cudaHostRegister(pointer, nbytes, _CUDA_HOST_REGISTER_PORTABLE))
    except torch.cuda.CudaError as error:
        raise HostPoolError(f"cannot pin {nbytes} bytes of host memory: {error}") from error
    return lambda: torch.cuda.check_error(cudart.cudaHostUnregister(pointer))


class HostPool:
    """The mapped pool. Build it with `create` (the service) or `attach` (the worker).

    Tensors from `tensor()` and views from `slot_bytes()` point into the mapping: `close()`
    refuses (HostPoolError) while any is alive, rather than unmap memory under them.
    """

    def __init__(self, shm: SharedMemory, layout: HostPoolLayout, owner: bool) -> None:
        self.layout = layout
        self._shm = shm
        self._owner = owner
        self._unpin: Callable[[], None] | None = None
        self._closed = False

    @classmethod
    def create(cls, name: str | None, layout: HostPoolLayout) -> HostPool:
        """A new zero-filled segment (`name` None: a fresh random one)."""
        _check_shm_room(layout.total_bytes)
        try:
            shm = SharedMemory(name, create=True, size=layout.total_bytes)
        except FileExistsError:
            raise HostPoolError(f"shared memory {name!r} already exists: a pool that was never "
                                "closed, or another service's") from None
        _CREATED_HERE.add(shm.name)
        return cls(shm, layout, owner=True)

    @classmethod
    def attach(cls, name: str, layout: HostPoolLayout) -> HostPool:
        """Maps the segment the hicache service created under `name`."""
        try:
            shm = _open_untracked(name)
        except FileNotFoundError:
            raise HostPoolError(f"no shared memory {name!r}: is the hicache service up, and "
                                "is this its pool's name?") from None
        if shm.size < layout.total_bytes:
            shm.close()
            raise HostPoolError(f"shared memory {name!r} holds {shm.size} bytes; the layout "
                                f"{layout} needs {layout.total_bytes}")
        return cls(shm, layout, owner=False)

    @property
    def name(self) -> str:
        return self._shm.name

    def tensor(self) -> torch.Tensor:
        """The whole pool as a tensor shaped `layout.shape`, sharing the memory (no copy)."""
        self._check_open()
        # Each tensor gets a view of its own, which torch keeps alive: while it lives, the
        # mapping cannot be closed under it.
        view = self._shm.buf[:self.layout.total_bytes]
        return torch.frombuffer(view, dtype=self.layout.torch_dtype).view(self.layout.shape)

    def slot_bytes(self, slot: int) -> memoryview:
        """The slot's bytes, in place; release the view (`with pool.slot_bytes(i) as view:`)."""
        start = self._slot_start(slot)
        return self._shm.buf[start:start + self.layout.bytes_per_slot]

    def write_slot(self, slot: int, data: bytes | memoryview) -> None:
        """Fills the slot with one page of every layer, as `slot_bytes` lays it out."""
        view = memoryview(data).cast("B")
        if view.nbytes != self.layout.bytes_per_slot:
            raise ValueError(f"a slot holds {self.layout.bytes_per_slot} bytes, got {view.nbytes}")
        start = self._slot_start(slot)
        target = self._shm.buf[start:start + view.nbytes]
        try:
            # NumPy lets go of the GIL for the copy, where assigning to the memoryview holds it
            # for all the MiBs: a fetch places pages on a thread while its event loop receives.
            np.copyto(np.frombuffer(target, dtype=np.uint8), np.frombuffer(view, dtype=np.uint8))
        finally:
            target.release()

    def pin(self) -> bool:
        """Pins the pool for CUDA (see `pin`) until close; False where there is no CUDA."""
        self._check_open()
        if self._unpin is None:
            self._unpin = pin(self.tensor())
        return self._unpin is not None

    def close(self) -> None:
        """Unpins and unmaps the pool; the creator also removes its name. Idempotent.

        Raises HostPoolError while a tensor or view of the pool is alive; the pool is then
        unusable, and a later close (once they are gone) finishes the job.
        """
        if self._closed:
            return
        if self._unpin is not None:
            self._unpin()
            self._unpin = None
        if self._owner:
            # The name first: no other process can map it from now on. Already gone means
            # someone else unlinked it; the mapping still has to go.
            with suppress(FileNotFoundError):
                self._shm.unlink()
            _CREATED_HERE.discard(self._shm.name)
            self._owner = False
        try:
            self._shm.close()
        except BufferError:
            raise HostPoolError(f"host pool {self.name!r} still has live tensors or views; "
                                "drop them before close()") from None
        self._closed = True

    def __enter__(self) -> HostPool:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed or self._shm.buf is None:  # buf is gone after a refused close too
            raise HostPoolError(f"host pool {self.name!r} is closed")

    def _slot_start(self, slot: int) -> int:
        self._check_open()
        if not 0 <= slot < self.layout.num_slots:
            raise IndexError(f"slot {slot} is out of range [0, {self.layout.num_slots})")
        return slot * self.layout.bytes_per_slot
