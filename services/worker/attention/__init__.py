"""Attention backends, chosen by `--attention-backend` name."""

from __future__ import annotations

from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec, PagedAttention
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.kv_pool import KVPool

ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {
    TorchAttentionBackend.name: TorchAttentionBackend,
}


def make_attention_backend(name: str, kv_pool: KVPool) -> AttentionBackend:
    try:
        backend_class = ATTENTION_BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(ATTENTION_BACKENDS))
        raise ValueError(f"unknown attention backend {name!r}; available: {known}") from None
    return backend_class(kv_pool)


__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "AttentionSpec", "PagedAttention",
           "make_attention_backend"]
