"""Which attention backends are offered, and what `auto` picks (runs on any machine)."""

from __future__ import annotations

import importlib.util

import torch

from radixmesh.services.worker.attention import ATTENTION_BACKENDS, pick_attention_backend


def test_triton_is_offered_exactly_when_it_can_run():
    can_run = importlib.util.find_spec("triton") is not None and torch.cuda.is_available()
    assert ("triton" in ATTENTION_BACKENDS) == can_run
    assert "torch" in ATTENTION_BACKENDS


def test_flashinfer_is_offered_exactly_when_it_can_run():
    can_run = importlib.util.find_spec("flashinfer") is not None and torch.cuda.is_available()
    assert ("flashinfer" in ATTENTION_BACKENDS) == can_run


def _on_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def test_auto_picks_torch_on_cpu():
    for dtype in (torch.float32, torch.bfloat16):
        assert pick_attention_backend("auto", torch.device("cpu"), dtype) == "torch"


def test_auto_on_cuda_prefers_flashinfer_on_hopper_in_half_precision_then_triton():
    triton_or_torch = "triton" if "triton" in ATTENTION_BACKENDS else "torch"
    half = "flashinfer" if "flashinfer" in ATTENTION_BACKENDS and _on_hopper() else triton_or_torch
    cuda = torch.device("cuda")
    assert pick_attention_backend("auto", cuda, torch.bfloat16) == half
    assert pick_attention_backend("auto", cuda, torch.float16) == half
    # FlashInfer has no float32 kernels.
    assert pick_attention_backend("auto", cuda, torch.float32) == triton_or_torch


def test_a_named_backend_is_taken_as_is():
    assert pick_attention_backend("torch", torch.device("cuda"), torch.bfloat16) == "torch"
    assert pick_attention_backend("flashinfer", torch.device("cpu"), torch.float32) == "flashinfer"
