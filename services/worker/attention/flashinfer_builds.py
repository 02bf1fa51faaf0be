"""The FlashInfer modules the backend's first passes would compile, named ahead of time.

FlashInfer compiles a module per kernel specialisation on first use (nvcc, tens of seconds each
on a bare machine): on a cold H100 the worker's first forward pass waited 57 s for its prefill
module, and graph capture for the decode one. Each module here pairs FlashInfer's generator
with its getter, called with the arguments the backend's `plan` calls will pass: the worker
builds them all while the weights load (kernel_builds.py), the getters cache what they loaded,
and `plan` then only looks the module up. A module `plan` never uses costs compiler time only.
"""

from __future__ import annotations

import functools
import importlib

import torch

from radixmesh.services.worker.attention.base import KernelShapes
from radixmesh.services.worker.jit_module import JitModule

# From this many query heads per KV head, decode runs FlashInfer's tensor-core (prefill) kernel:
# the CUDA-core decode kernel re-reads K/V once per query head of the group.
TENSOR_CORE_MIN_GROUP = 4
_NO_POSITION_ENCODING = 0  # FlashInfer's PosEncodingMode.NONE: RoPE is applied before attention


def prefill_backend(windowed: bool, fp8_cache: bool) -> str:
    """The `backend` the prefill wrappers are made with. FlashInfer 0.5.3's Hopper (fa3) prefill
    deadlocks on some windowed GQA batches (seen on an H100: 32/8 heads, window 300, 90 new
    tokens), and its fa3 kernels want the query and the KV in one dtype; fa2 has neither
    limit."""
    return "fa2" if windowed or fp8_cache else "auto"


def flashinfer_kernel_builds(shapes: KernelShapes, device: torch.device) -> list[JitModule]:
    """One per distinct module: the prefill module of each window kind (also the cascade's
    shared level, planned like a prefill), the decode module of each (FlashInfer's prefill
    kernels in fa2 form where decode runs on tensor cores), and the cascade's merge."""
    prefill = importlib.import_module("flashinfer.prefill")  # on the caller's thread: imports
    decode = importlib.import_module("flashinfer.decode")    # racing on threads are avoidable
    utils = importlib.import_module("flashinfer.utils")
    fp8_cache = shapes.kv_dtype != shapes.compute_dtype
    dtypes = (shapes.compute_dtype, shapes.kv_dtype, shapes.compute_dtype, torch.int32)
    heads = (shapes.head_dim, shapes.head_dim, _NO_POSITION_ENCODING)
    modules: dict[tuple, JitModule] = {}
    for windowed in sorted(shapes.windowed):
        backend = prefill_backend(windowed, fp8_cache)
        if backend == "auto":  # as the wrapper's plan resolves it
            backend = utils.determine_attention_backend(
                device, _NO_POSITION_ENCODING, False, False, shapes.compute_dtype, shapes.kv_dtype)
        # (…, use_sliding_window, use_logits_soft_cap, use_fp16_qk_reduction)
        prefill_args = (backend, *dtypes, *heads, windowed, False, False)
        modules[prefill_args] = _module(f"prefill-{backend}", prefill, "batch_prefill",
                                        prefill_args)
        if shapes.query_group >= TENSOR_CORE_MIN_GROUP:
            decode_args = ("fa2", *dtypes, *heads, windowed, False, False)
            modules[decode_args] = _module("decode-fa2", prefill, "batch_prefill", decode_args)
        else:
            decode_args = (*dtypes, *heads, windowed, False)
            modules[decode_args] = _module("decode", decode, "batch_decode", decode_args)
    if shapes.prefix_groups:
        cascade = importlib.import_module("flashinfer.cascade")
        modules[("merge",)] = _module("cascade", cascade, "cascade", ())
    return list(modules.values())


def _module(name: str, namespace: object, kind: str, args: tuple) -> JitModule:
    """FlashInfer's `gen_{kind}_module` and `get_{kind}_module` of `namespace`, on `args`."""
    return JitModule(name, functools.partial(getattr(namespace, f"gen_{kind}_module"), *args),
                     functools.partial(getattr(namespace, f"get_{kind}_module"), *args))
