"""Attention backends, chosen by `--attention-backend` name."""

from __future__ import annotations

import importlib.util

import torch

from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec, PagedAttention
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.shared.registry import Registry

ATTENTION_BACKENDS: Registry[type[AttentionBackend]] = Registry("attention backend")
ATTENTION_BACKENDS.add(TorchAttentionBackend.name, TorchAttentionBackend)


def _triton_usable() -> bool:
    """Triton kernels need the package and a CUDA device; without either the backend is not
    offered (and its module, which imports triton, is never imported)."""
    return importlib.util.find_spec("triton") is not None and torch.cuda.is_available()


if _triton_usable():
    from radixmesh.services.worker.attention.triton_backend import TritonAttentionBackend

    ATTENTION_BACKENDS.add(TritonAttentionBackend.name, TritonAttentionBackend)


def _flashinfer_usable() -> bool:
    """FlashInfer needs the package and a CUDA device. Only its presence is checked here: the
    backend imports it on construction, so offering it costs nothing at startup."""
    return importlib.util.find_spec("flashinfer") is not None and torch.cuda.is_available()


if _flashinfer_usable():
    from radixmesh.services.worker.attention.flashinfer_backend import FlashInferAttentionBackend

    ATTENTION_BACKENDS.add(FlashInferAttentionBackend.name, FlashInferAttentionBackend)


def make_attention_backend(name: str, kv_pool: KVPool,
                           deterministic: bool = False) -> AttentionBackend:
    return ATTENTION_BACKENDS.get(name)(kv_pool, deterministic=deterministic)


def pick_attention_backend(name: str, device: torch.device, dtype: torch.dtype,
                           deterministic: bool = False) -> str:
    """`auto` takes the fastest backend that runs on `device` in `dtype`: FlashInfer on a Hopper
    GPU (compute capability 9.x) when it is offered and supports `dtype` (it has no float32
    kernels), else Triton on a CUDA device when it is offered, else torch. `deterministic`
    takes only batch-invariant backends (not FlashInfer, whose split-KV plan follows the
    batch)."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "torch"
    flashinfer = ATTENTION_BACKENDS.find("flashinfer")
    if (flashinfer is not None and not deterministic and dtype in flashinfer.supported_dtypes
            and torch.cuda.get_device_capability(device)[0] == 9):
        return "flashinfer"
    return "triton" if "triton" in ATTENTION_BACKENDS else "torch"


__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "AttentionSpec", "PagedAttention",
           "make_attention_backend", "pick_attention_backend"]
