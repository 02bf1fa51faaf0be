"""The worker's kernel row moves (`KernelRows`) do exactly what its torch ops (`TorchRows`) do:
loads, staging and stores of KV pages between a device pool and a host pool of slots."""

from __future__ import annotations

import pytest
import torch

from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.page_rows import TorchRows, device_rows

pytest.importorskip("radixmesh.kernels.page_copy", reason="needs triton")
from radixmesh.services.worker.page_rows import KernelRows  # noqa: E402

LAYERS, PAGES, SLOTS = 3, 6, 5


def filled_pool(device: str, seed: int) -> KVPool:
    pool = KVPool(PAGES, page_size=4, num_layers=LAYERS, num_kv_heads=2, head_dim=8,
                  dtype=torch.bfloat16, device=device)
    generator = torch.Generator().manual_seed(seed)
    for layer in range(LAYERS):
        for buffer in (pool.keys(layer), pool.values(layer)):
            buffer.copy_(torch.randn(buffer.shape, generator=generator))
    return pool


TP_SIZE, TP_RANK = 2, 1  # the host pool's slots hold two ranks' parts; the copies use rank 1's


def host_slots(pool: KVPool, seed: int) -> torch.Tensor:
    """A whole host pool: [slot, rank, layer, K/V, word]."""
    row_words = pool.page_size * pool.num_kv_heads * pool.head_dim * 2 // 8
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2**62, 2**62, (SLOTS + 1, TP_SIZE, LAYERS, 2, row_words),
                         generator=generator).to(pool.device)


def both(device: str) -> list[tuple[KVPool, torch.Tensor, object]]:
    """The same pool and host contents, once per implementation (each moving rank 1's part of
    the host slots, a strided view)."""
    made = []
    for rows_class in (TorchRows, KernelRows):
        pool, host = filled_pool(device, 1), host_slots(filled_pool(device, 1), 2)
        made.append((pool, host, rows_class(device_rows(pool, torch.int64),
                                            host[:, TP_RANK])))
    return made


def pool_state(pool: KVPool) -> list[torch.Tensor]:
    """The pool's bits (host slots hold random bits, some of them NaNs as bf16)."""
    return [t.view(torch.int16).clone() for layer in range(LAYERS)
            for t in (pool.keys(layer), pool.values(layer))]


def test_loads_match(device: str) -> None:
    pages, slots = torch.tensor([4, 1], device=device), torch.tensor([2, 5], device=device)
    states = []
    for pool, _host, rows in both(device):
        for layer in range(LAYERS):
            rows.load_layer(layer, pages, slots)
        states.append(pool_state(pool))
    assert all(torch.equal(a, b) for a, b in zip(*states, strict=True))
    assert not torch.equal(states[0][0], pool_state(filled_pool(device, 1))[0])  # it moved


def test_backups_match(device: str) -> None:
    pages, slots = torch.tensor([6, 2, 3], device=device), torch.tensor([1, 4, 3], device=device)
    results = []
    for _pool, host, rows in both(device):
        staged = rows.stage(pages)
        rows.store(staged, slots)
        results.append((staged, host))
    (torch_staged, torch_host), (kernel_staged, kernel_host) = results
    assert torch.equal(torch_staged, kernel_staged)
    assert torch.equal(torch_host, kernel_host)
    before = host_slots(filled_pool(device, 1), 2)
    assert not torch.equal(torch_host, before)  # it moved...
    assert torch.equal(kernel_host[:, 1 - TP_RANK], before[:, 1 - TP_RANK])  # ...its part only
