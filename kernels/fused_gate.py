"""Whether the models take the fused Triton path for their small elementwise layers.

Importing this never imports triton: the CPU-only install, where triton is absent, must still
load the models. The layers call `use_triton(x)` on every forward, so the check is a couple of
attribute reads, and the kill switch (`RADIXMESH_FUSED_KERNELS=0`, or `set_fused_kernels`)
lets a test or a bisecting operator compare the two paths on the same GPU.
"""

from __future__ import annotations

import importlib.util
import os

import torch

# Triton installed and a CUDA device present: only then are the kernel modules imported.
TRITON_USABLE = importlib.util.find_spec("triton") is not None and torch.cuda.is_available()

_enabled = os.environ.get("RADIXMESH_FUSED_KERNELS", "1") != "0"


def use_triton(x: torch.Tensor) -> bool:
    """True when `x` should go through the fused Triton kernels instead of the torch ops."""
    return _enabled and TRITON_USABLE and x.is_cuda


def set_fused_kernels(enabled: bool) -> bool:
    """Turns the fused path on or off for the whole process; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, enabled
    return previous
