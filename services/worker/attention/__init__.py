"""Attention backends, chosen by `--attention-backend` name."""

from __future__ import annotations

import importlib.util

import torch

from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec, PagedAttention
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.kv_pool import KVPool

ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {
    TorchAttentionBackend.name: TorchAttentionBackend,
}


def _triton_usable() -> bool:
    """Triton kernels need the package and a CUDA device; without either the backend is not
    offered (and its module, which imports triton, is never imported)."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


if _triton_usable():
    from radixmesh.services.worker.attention.triton_backend import TritonAttentionBackend

    ATTENTION_BACKENDS[TritonAttentionBackend.name] = TritonAttentionBackend


def make_attention_backend(name: str, kv_pool: KVPool) -> AttentionBackend:
    try:
        backend_class = ATTENTION_BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(ATTENTION_BACKENDS))
        raise ValueError(f"unknown attention backend {name!r}; available: {known}") from None
    return backend_class(kv_pool)


def pick_attention_backend(name: str, device: torch.device) -> str:
    """`auto` takes the fastest backend that runs on `device`: Triton on a CUDA device when
    it is offered (installed, CUDA present), else torch."""
    if name != "auto":
        return name
    return "triton" if device.type == "cuda" and "triton" in ATTENTION_BACKENDS else "torch"


__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "AttentionSpec", "PagedAttention",
           "make_attention_backend", "pick_attention_backend"]
