"""Helpers for the FP8 tests: one prefill pass of a model over a real KV pool, and the
statistical size of FP8 rounding error."""

from __future__ import annotations

import math

import torch

from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.model_config import ModelConfig

E4M3_MANTISSA_BITS = 3
# Round to nearest with m mantissa bits: |error| <= half an ulp = 2^-(m+1) of the leading power
# of two, so relative to the value itself at most 2^-(m+1) (2^-4 for e4m3).
E4M3_REL_BOUND = 2.0 ** -(E4M3_MANTISSA_BITS + 1)
# Below e4m3's smallest normal (2^-6) values are subnormal, spaced 2^-9: the error there is at
# most half that spacing, 2^-10, in units of the row's scale.
E4M3_SUBNORMAL_ABS = 2.0 ** -10


def e4m3_rms_error() -> float:
    """The RMS relative rounding error of e4m3, weighted by magnitude: ||W - Q(W)|| / ||W||.

    The error of one element is uniform in +-half an ulp, ulp = 2^-3 * 2^e, so for a value
    m * 2^e (m in [1, 2)) its relative error is u / m with u ~ U(-2^-4, 2^-4): E[u^2] =
    2^-8 / 3. Mantissas of data spread over many octaves are log-uniform (Benford), so
    E[1 / m^2] = (1 / ln 2) * integral_1^2 m^-3 dm = 3 / (8 ln 2). Together
    eps = 2^-4 * sqrt(1 / (8 ln 2)) = 0.02654. A GEMM's output inherits the same relative RMS
    error: its errors are sums of independent, zero-mean terms weighted like the weights.
    """
    return E4M3_REL_BOUND * math.sqrt(1 / (8 * math.log(2)))


@torch.no_grad()
def prefill_logits(model: torch.nn.Module, config: ModelConfig, tokens: list[int],
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """Next-token logits [len(tokens), vocab] (float32) of one prefill of `tokens`."""
    n = len(tokens)
    dtype = next(p for p in model.parameters() if p.dtype.is_floating_point
                 and p.element_size() > 1).dtype
    kv_pool = KVPool(n + 1, 1, config.num_hidden_layers, config.num_key_value_heads,
                     config.head_dim, dtype, device)
    backend = TorchAttentionBackend(kv_pool)
    pages = torch.arange(1, n + 1, dtype=torch.int32, device=device)  # page 0 is padding

    def on_device(values: list[int], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    batch = ForwardBatch(
        mode=ForwardMode.EXTEND, input_ids=on_device(tokens, torch.int64),
        positions=torch.arange(n, device=device), out_cache_loc=pages.long(),
        seq_lens=on_device([n], torch.int32), extend_lens=on_device([n], torch.int32),
        extend_starts=on_device([0], torch.int32), page_table=pages[None, :],
        logits_indices=torch.arange(n, device=device), seq_lens_cpu=[n], extend_lens_cpu=[n],
        num_extends=1, attn_backend=backend, kv_pool=kv_pool)
    backend.prepare(batch)
    hidden = model(batch)
    return model.compute_logits(hidden[batch.logits_indices]).float().cpu()


def random_tokens(vocab_size: int, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=generator).tolist()


def relative_errors(logits: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per token: ||logits - reference|| / ||reference||."""
    return (logits - reference).norm(dim=-1) / reference.norm(dim=-1)
