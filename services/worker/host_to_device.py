"""Host values to the device without stalling the pipeline.

A copy from pageable host memory may make the CUDA driver wait for the stream to drain before
it stages the data, so preparing step N + 1 would wait for step N to finish: exactly the
overlap the worker exists to get. Values therefore go through page-locked memory (from torch's
caching host allocator, so reuse is cheap and a buffer is not recycled before its copy ran)
and are copied without blocking.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`torch.tensor(values, dtype=dtype)` on `device`, queued behind the stream's work."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
