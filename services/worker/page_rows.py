"""The two ways the worker moves KV page rows between its device pool and the host pool.

Both see the same things: the device pool as one [page, word] row table per layer for K and one
for V, and the host pool as [slot, layer, K/V, word] (one slot holds a page of every layer; under
tensor parallelism, this rank's part of each slot, a strided view).
A backup is two moves: `stage` gathers the pages into a buffer laid out like host slots, in
stream order with the steps, then `store` writes the staged slots to the host pool beside them.

- `TorchRows`: torch indexing ops, three per layer. Any device; on CUDA the ops launch as many
  blocks as rows, so a large transfer over PCIe holds every SM while it lasts.
- `KernelRows` (CUDA with Triton): `kernels/page_copy.py`, one launch per move, moving every
  plane at once; the PCIe moves run on a few SMs so the forward pass beside them keeps the rest.
"""

from __future__ import annotations

import torch

from radixmesh.services.worker.kv_pool import KVPool

# CTAs for each move (see kernels/page_copy.py): gathering on the device is a fast device-to-
# device copy, so it may take the whole device for its short life; loads feed a forward pass
# that waits for them, so they get more than backups, which nothing waits for.
_STAGE_CTAS = 1024
_LOAD_CTAS = 32
_STORE_CTAS = 8


def device_rows(kv_pool: KVPool, word: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (K, V) buffers as [page, word] rows."""
    shape = (kv_pool.num_pages + 1, kv_pool.page_size, kv_pool.num_kv_heads, kv_pool.head_dim)
    return [(as_words(kv_pool.keys(layer).view(shape), word),
             as_words(kv_pool.values(layer).view(shape), word))
            for layer in range(kv_pool.num_layers)]


def as_words(pages: torch.Tensor, word: torch.dtype) -> torch.Tensor:
    """[..., page_size, kv_heads, head_dim] -> [..., words]: each page as one row of `word`s."""
    return pages.flatten(-3).view(torch.uint8).view(word)


class TorchRows:
    """Row moves as torch ops on whatever device the tensors are."""

    def __init__(self, device: list[tuple[torch.Tensor, torch.Tensor]],
                 host: torch.Tensor) -> None:
        self._device = device
        self._host = host  # [slot, layer, K/V, word]

    def load_layer(self, layer: int, pages: torch.Tensor, slots: torch.Tensor) -> None:
        keys, values = self._device[layer]
        rows = self._host[:, layer].index_select(0, slots)
        keys.index_copy_(0, pages, rows[:, 0])
        values.index_copy_(0, pages, rows[:, 1])

    def stage(self, pages: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.stack((keys.index_select(0, pages),
                                         values.index_select(0, pages)), 1)
                            for keys, values in self._device], 1)

    def store(self, staged: torch.Tensor, slots: torch.Tensor) -> None:
        self._host.index_copy_(0, slots, staged)


class KernelRows:
    """Row moves as page-copy kernel launches; every plane of a move in one launch."""

    def __init__(self, device: list[tuple[torch.Tensor, torch.Tensor]],
                 host: torch.Tensor) -> None:
        from radixmesh.kernels.page_copy import copy_rows  # Triton: only where this class is

        self._copy_rows = copy_rows
        self._host = host
        self._layers, self._planes, self._row_words = host.shape[1], host.shape[1] * 2, \
            host.shape[3]
        # A slot of the host pool holds every tensor-parallel rank's part; `host` is this
        # rank's (its planes contiguous), so host slots lie `stride(0)` words apart.
        self._host_slot_words = host.stride(0)
        on = host.device
        self._device_bases = torch.tensor([rows.data_ptr() for layer in device for rows in layer],
                                          dtype=torch.int64, device=on)
        word_bytes = host.element_size()
        plane_offsets = torch.arange(self._planes, dtype=torch.int64, device=on) \
            * self._row_words * word_bytes
        self._host_bases = host.data_ptr() + plane_offsets
        self._plane_offsets = plane_offsets  # of a staging buffer laid out like host slots
        self._slot_words = self._planes * self._row_words

    def load_layer(self, layer: int, pages: torch.Tensor, slots: torch.Tensor) -> None:
        planes = slice(2 * layer, 2 * layer + 2)
        self._copy_rows(self._host_bases[planes], self._device_bases[planes],
                        self._host_slot_words, self._row_words, self._row_words, slots, pages,
                        num_ctas=_LOAD_CTAS)

    def stage(self, pages: torch.Tensor) -> torch.Tensor:
        staged = torch.empty((len(pages), self._layers, 2, self._row_words),
                             dtype=self._host.dtype, device=pages.device)
        order = torch.arange(len(pages), dtype=torch.int64, device=pages.device)
        self._copy_rows(self._device_bases, self._plane_offsets + staged.data_ptr(),
                        self._row_words, self._slot_words, self._row_words, pages, order,
                        num_ctas=_STAGE_CTAS)
        return staged

    def store(self, staged: torch.Tensor, slots: torch.Tensor) -> None:
        order = torch.arange(len(slots), dtype=torch.int64, device=slots.device)
        # One plane whose rows are whole slots: the staged buffer already has the slot layout.
        # (Addresses are made on the device: a tensor from a list would be a blocking copy.)
        self._copy_rows(self._plane_offsets[:1] + staged.data_ptr(), self._host_bases[:1],
                        self._slot_words, self._host_slot_words, self._slot_words, order, slots,
                        num_ctas=_STORE_CTAS)


def make_rows(device: list[tuple[torch.Tensor, torch.Tensor]],
              host: torch.Tensor) -> TorchRows | KernelRows:
    """The kernel on CUDA where Triton is installed and rows are whole int64 words; torch ops
    otherwise."""
    if host.device.type == "cuda" and host.dtype == torch.int64:
        try:
            return KernelRows(device, host)
        except ImportError:
            pass
    return TorchRows(device, host)
