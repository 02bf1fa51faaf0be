"""Sizes the KV pool: from --max-total-tokens, else from free GPU memory, else a CPU default."""

from __future__ import annotations

import logging

import torch

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
