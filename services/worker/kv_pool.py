"""The KV cache tensors: one K and one V buffer per layer, addressed by flat slot.

Slot `page_id * page_size + offset` holds the token at `offset` within page `page_id`. Page 0 is
padding: never granted by the scheduler, so CUDA-graph padding and masked lanes can write there.

`--kv-cache-dtype fp8_e4m3` (or `fp8_e5m2`) stores K and V in FP8 with one scale per tensor and
layer, as vLLM's and SGLang's default FP8 cache does: the stored value is `x / scale`, read back
as `stored * scale`. The scales come from the checkpoint when it has them (kv_scales.py, handed
in by the model runner), else they are 1.0, as in vLLM and SGLang: the relative precision of a
float format does not depend on the scale, only its range does, and post-RoPE keys and values of
most trained models sit inside e4m3's +-448; a calibrated scale keeps the others in range too.
Attention runs in the activation dtype (`compute_dtype`); each backend reads FP8 as it can
(dequantized by torch, converted on load by Triton, natively by FlashInfer).
"""

from __future__ import annotations

import torch

from radixmesh.kernels.kv_store import store_kv

# --kv-cache-dtype names (SGLang's) -> the storage dtype; "auto" stores in the model's dtype.
KV_CACHE_DTYPES: dict[str, torch.dtype | None] = {
    "auto": None, "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def resolve_kv_dtype(name: str, model_dtype: torch.dtype) -> torch.dtype:
    """The storage dtype `--kv-cache-dtype name` asks for, given the activations' dtype."""
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"--kv-cache-dtype must be one of {', '.join(KV_CACHE_DTYPES)}, "
                         f"not {name!r}")
    return KV_CACHE_DTYPES[name] or model_dtype


class KVPool:
    """Invariants: `k_buffers[l]` and `v_buffers[l]` are [num_slots, kv_heads, head_dim] in
    `dtype`; `k_scales[l]` / `v_scales[l]` are positive and 1.0 unless the cache is FP8 and a
    checkpoint said otherwise; a stored token reads back as `buffer[slot] * scale`."""

    def __init__(self, num_pages: int, page_size: int, num_layers: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str,
                 compute_dtype: torch.dtype | None = None,
                 k_scales: list[float] | None = None,
                 v_scales: list[float] | None = None) -> None:
        self.num_pages = num_pages
        self.page_size = page_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        if compute_dtype is None and dtype in FP8_DTYPES:
            raise ValueError("an FP8 KV pool needs the activations' dtype (compute_dtype)")
        self.compute_dtype = compute_dtype or dtype
        self.device = torch.device(device)
        self.k_scales = list(k_scales or [1.0] * num_layers)
        self.v_scales = list(v_scales or [1.0] * num_layers)
        if len(self.k_scales) != num_layers or len(self.v_scales) != num_layers:
            raise ValueError(f"KV scales must have one value per layer ({num_layers})")
        if min(self.k_scales + self.v_scales) <= 0:
            raise ValueError("KV scales must be positive")
        # A bf16/fp16/fp32 cache stores exact copies; backends skip the scales there.
        if dtype not in FP8_DTYPES and set(self.k_scales + self.v_scales) != {1.0}:
            raise ValueError(f"KV scales other than 1.0 need an FP8 cache, not {dtype}")
        num_slots = (num_pages + 1) * page_size
        shape = (num_slots, num_kv_heads, head_dim)
        self.k_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        element_size = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * element_size

    @property
    def dtype_name(self) -> str:
        """The KV dtype as the wire and the host pool spell it ("bfloat16", "float8_e4m3fn")."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def is_fp8(self) -> bool:
        return self.dtype in FP8_DTYPES

    def store(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes new tokens' K and V ([T, kv_heads, head_dim]) at `slots` ([T]), quantized
        with the layer's scales when the cache is FP8."""
        store_kv(self.k_buffers[layer_id], self.v_buffers[layer_id], slots, k, v,
                 self.k_scales[layer_id], self.v_scales[layer_id])

    def keys(self, layer_id: int) -> torch.Tensor:
        return self.k_buffers[layer_id]

    def values(self, layer_id: int) -> torch.Tensor:
        return self.v_buffers[layer_id]

    def read_keys(self, layer_id: int, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """K at `slots` (any shape of slot indices) in `dtype`, dequantized."""
        return _dequantize(self.k_buffers[layer_id][slots], self.k_scales[layer_id], dtype)

    def read_values(self, layer_id: int, slots: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """V at `slots` (any shape of slot indices) in `dtype`, dequantized."""
        return _dequantize(self.v_buffers[layer_id][slots], self.v_scales[layer_id], dtype)


def _dequantize(stored: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    values = stored.to(dtype)
    # A unit scale is the common case: skipping it keeps a bf16/fp32 cache's reads exact copies.
    return values if scale == 1.0 else values.mul_(scale)
