"""Which attention backends are offered, and what `auto` picks (runs on any machine)."""

from __future__ import annotations

import importlib.util

import torch

from radixmesh.services.worker.attention import ATTENTION_BACKENDS
from radixmesh.services.worker.attention import pick_attention_backend


def test_triton_is_offered_exactly_when_it_can_run():
    can_run = importlib.util.find_spec("triton") is not None and torch.cuda.is_available()
    assert ("triton" in ATTENTION_BACKENDS) == can_run
    assert "torch" in ATTENTION_BACKENDS


def test_auto_picks_torch_on_cpu_and_triton_on_cuda_when_offered():
    assert pick_attention_backend("auto", torch.device("cpu")) == "torch"
    on_cuda = "triton" if "triton" in ATTENTION_BACKENDS else "torch"
    assert pick_attention_backend("auto", torch.device("cuda")) == on_cuda
    assert pick_attention_backend("torch", torch.device("cuda")) == "torch"
