"""The FlashInfer modules the backend's first passes would compile, named ahead of time.

FlashInfer compiles a module per kernel specialisation on first use (nvcc, tens of seconds each
on a bare machine): on a cold H100 the worker's first forward pass waited 57 s for its prefill
module, and graph capture for the decode one. These builds call the same module getters with
the arguments the backend's `plan` calls will pass, so they can run on threads while the
weights load; the getters cache what they built (in memory and on disk, under a file lock),
and `plan` then only looks the module up. A getter called with arguments `plan` never uses
builds a module that stays unused: wasted compiler time, nothing worse.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

from radixmesh.services.worker.attention.base import KernelShapes

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


def flashinfer_kernel_builds(shapes: KernelShapes,
                             device: torch.device) -> list[Callable[[], object]]:
    """One build per distinct module: the prefill module of each window kind (also the cascade's
    shared level, planned like a prefill), the decode module of each (FlashInfer's prefill
    kernels in fa2 form where decode runs on tensor cores), and the cascade's merge."""
    prefill = importlib.import_module("flashinfer.prefill")  # on the caller's thread: imports
    decode = importlib.import_module("flashinfer.decode")    # racing on threads are avoidable
    utils = importlib.import_module("flashinfer.utils")
    fp8_cache = shapes.kv_dtype != shapes.compute_dtype
    dtypes = (shapes.compute_dtype, shapes.kv_dtype, shapes.compute_dtype, torch.int32)
    heads = (shapes.head_dim, shapes.head_dim, _NO_POSITION_ENCODING)
    builds: dict[tuple, Callable[[], object]] = {}
    for windowed in sorted(shapes.windowed):
        backend = prefill_backend(windowed, fp8_cache)
        if backend == "auto":  # as the wrapper's plan resolves it
            backend = utils.determine_attention_backend(
                device, _NO_POSITION_ENCODING, False, False, shapes.compute_dtype, shapes.kv_dtype)
        # (…, use_sliding_window, use_logits_soft_cap, use_fp16_qk_reduction)
        prefill_args = (backend, *dtypes, *heads, windowed, False, False)
        builds[prefill_args] = functools.partial(prefill.get_batch_prefill_module, *prefill_args)
        if shapes.query_group >= TENSOR_CORE_MIN_GROUP:
            decode_args = ("fa2", *dtypes, *heads, windowed, False, False)
            getter = prefill.get_batch_prefill_module
        else:
            decode_args = (*dtypes, *heads, windowed, False)
            getter = decode.get_batch_decode_module
        builds[decode_args] = functools.partial(getter, *decode_args)
    if shapes.prefix_groups:
        builds[("merge",)] = importlib.import_module("flashinfer.cascade").get_cascade_module
    return list(builds.values())
