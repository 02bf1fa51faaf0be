"""Triton attention kernels over the paged KV cache (importing this needs triton)."""

from radixmesh.kernels.attention.decode import paged_decode_attention, pick_num_splits
from radixmesh.kernels.attention.extend import paged_extend_attention

__all__ = ["paged_decode_attention", "paged_extend_attention", "pick_num_splits"]
