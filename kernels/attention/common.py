"""What the attention kernels share: log-domain constants and the tensor-core precision rule."""

from __future__ import annotations

import torch

# The kernels work in base 2 (exp2 is one instruction): scores are scaled by log2(e) up front.
LOG2_E = 1.4426950408889634


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs get exact fp32 products (tf32 would drift from the torch reference); Triton
    ignores the setting for 16-bit inputs."""
    return "ieee" if dtype == torch.float32 else "tf32"


def head_block(head_dim: int) -> int:
    """The head_dim tile: a power of two (Triton's rule) of at least 16 (tl.dot's)."""
    return max(16, 1 << (head_dim - 1).bit_length())
