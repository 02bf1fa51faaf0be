"""The KV cache tensors: one K and one V buffer per layer, addressed by flat slot.

Slot `page_id * page_size + offset` holds the token at `offset` within page `page_id`. Page 0 is
padding: never granted by the scheduler, so CUDA-graph padding and masked lanes can write there.
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(self, num_pages: int, page_size: int, num_layers: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        self.num_pages = num_pages
        self.page_size = page_size
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
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
        """The KV dtype as the wire and the host pool spell it ("bfloat16")."""
        return str(self.dtype).removeprefix("torch.")

    def store(self, layer_id: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Writes new tokens' K and V ([T, kv_heads, head_dim]) at `slots` ([T])."""
        self.k_buffers[layer_id][slots] = k.to(self.dtype)
        self.v_buffers[layer_id][slots] = v.to(self.dtype)

    def keys(self, layer_id: int) -> torch.Tensor:
        return self.k_buffers[layer_id]

    def values(self, layer_id: int) -> torch.Tensor:
        return self.v_buffers[layer_id]
