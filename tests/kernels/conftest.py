"""Where the kernel tests run: a CUDA device, or the Triton interpreter on the CPU when
TRITON_INTERPRET=1 (slow, for developing without a GPU); otherwise they are skipped."""

from __future__ import annotations

import os

import pytest
import torch


def kernel_device() -> str | None:
    if torch.cuda.is_available():
        return "cuda"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    return None


@pytest.fixture
def device() -> str:
    found = kernel_device()
    if found is None:
        pytest.skip("needs a CUDA device (or TRITON_INTERPRET=1)")
    return found
