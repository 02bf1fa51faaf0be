"""The device a worker runs on, and its KV pool: sized from --max-total-tokens, else from free
GPU memory, else a CPU default."""

from __future__ import annotations

import logging

import torch
from torch import nn

from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.kv_pool import KVPool, resolve_kv_dtype
from radixmesh.services.worker.kv_scales import KVScales
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.tensor_parallel import TensorParallel

logger = logging.getLogger(__name__)

CPU_KV_BUDGET_BYTES = 1 << 30
CPU_MAX_DEFAULT_TOKENS = 1 << 16


def kv_pool_tokens(requested: int | None, bytes_per_token: int, device: torch.device,
                   mem_fraction_static: float) -> int:
    """Tokens the KV pool holds. `bytes_per_token` is in the KV cache's own dtype
    (`KVPool.bytes_per_token`): an FP8 cache has half of bf16's, so the same budget holds
    twice the tokens."""
    if requested is not None:
        return requested
    if device.type == "cuda":
        # What loading left cached in torch's allocator (the dummy weights' largest draw, the
        # 1 GiB embedding of an 8B model) is free for the pool too, but the driver counts it
        # as used until it is given back.
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(device)
        # The weights are loaded already: what is left under the static fraction is for KV.
        budget = free - total * (1.0 - mem_fraction_static)
        tokens = int(budget // bytes_per_token)
        if tokens < 1:
            raise RuntimeError(
                f"no GPU memory left for the KV cache: {free / 2**30:.1f} GiB free of "
                f"{total / 2**30:.1f} GiB with --mem-fraction-static {mem_fraction_static}")
        return tokens
    return min(CPU_MAX_DEFAULT_TOKENS, CPU_KV_BUDGET_BYTES // bytes_per_token)


def make_kv_pool(config: WorkerConfig, model: nn.Module, model_config: ModelConfig,
                 dtype: torch.dtype, device: torch.device, page_size: int,
                 parallel: TensorParallel, kv_scales: KVScales) -> KVPool:
    """The worker's KV pool, its heads this rank's share under tensor parallelism."""
    mc = model_config
    kv_heads = model.kv_heads
    kv_dtype = resolve_kv_dtype(config.kv_cache_dtype, dtype)
    per_token = KVPool.bytes_per_token(mc.num_hidden_layers, kv_heads, mc.head_dim, kv_dtype)
    tokens = kv_pool_tokens(config.max_total_tokens, per_token, device,
                            config.mem_fraction_static)
    # Ranks share one page table, so one pool size: what the tightest rank can hold.
    num_pages = parallel.agree_on_min(tokens // page_size, device)
    if num_pages < 1:
        raise ValueError(f"a KV pool of {tokens} tokens holds no page of {page_size}")
    logger.info("KV pool: %d pages of %d tokens (%.1f MiB)", num_pages, page_size,
                num_pages * page_size * per_token / 2**20)
    return KVPool(num_pages, page_size, mc.num_hidden_layers, kv_heads, mc.head_dim,
                  kv_dtype, device, compute_dtype=dtype,
                  k_scales=list(kv_scales.k), v_scales=list(kv_scales.v))


def resolve_device(name: str, base_gpu_id: int = 0) -> torch.device:
    """`--device` as a torch device; a GPU named without an index is cuda:`base_gpu_id`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", base_gpu_id)
    return torch.device(name)

