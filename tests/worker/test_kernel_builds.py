"""Background JIT kernel builds: they run beside the caller, a failed one is logged and left
for its first use, and the sampling backends name theirs."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading

import pytest
import torch

from radixmesh.services.worker.attention import ATTENTION_BACKENDS
from radixmesh.services.worker.attention.base import KernelShapes
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.kernel_builds import BackgroundKernelBuilds, worker_kernel_builds
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel
from radixmesh.services.worker.sampling import SAMPLING_BACKENDS
from tests.worker.test_model_config import LLAMA_31_V4


def test_builds_run_beside_the_caller_and_one_another() -> None:
    caller_went_on, second_ran = threading.Event(), threading.Event()
    ran: list[str] = []

    def first() -> None:  # ends only once the caller went on and the build after it ran
        assert caller_went_on.wait(10) and second_ran.wait(10)
        ran.append("first")

    def second() -> None:
        ran.append("second")
        second_ran.set()

    builds = BackgroundKernelBuilds([first, second])
    caller_went_on.set()
    assert builds.wait() is True
    assert ran == ["second", "first"]
    assert builds.failures == [] and builds.seconds > 0


def test_a_failed_build_is_logged_and_the_rest_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("nvcc: not found")

    with caplog.at_level(logging.WARNING):
        builds = BackgroundKernelBuilds([broken, lambda: ran.append("next")])
        builds.wait()
    assert ran == ["next"]
    assert [str(error) for error in builds.failures] == ["nvcc: not found"]
    assert "RuntimeError: nvcc: not found" in caplog.text


def test_no_builds_start_no_thread() -> None:
    builds = BackgroundKernelBuilds([])
    assert builds.wait() is False and builds._threads == []


def test_torch_attention_and_pytorch_sampling_build_nothing() -> None:
    config = ModelConfig.from_dicts(LLAMA_31_V4)
    assert worker_kernel_builds(config, torch.float32, "auto", "torch", "pytorch", SINGLE,
                                prefix_groups=False, device=torch.device("cpu")) == []


class ShapesBackend(TorchAttentionBackend):
    """Builds nothing; its one "build" hands back the shapes it was asked to build for."""

    name = "test-shapes"

    @classmethod
    def kernel_builds(cls, shapes: KernelShapes, device: torch.device) -> list:
        return [lambda: shapes]


@pytest.fixture
def shapes_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """ShapesBackend registered for one test only (the registry is the process's)."""
    monkeypatch.setitem(ATTENTION_BACKENDS._entries, ShapesBackend.name, ShapesBackend)


def shapes_for(config: dict, tp_size: int = 1, kv_cache_dtype: str = "auto") -> KernelShapes:
    parallel = TensorParallel(rank=tp_size - 1, size=tp_size)  # the last rank: any rank's share
    [build] = worker_kernel_builds(ModelConfig.from_dicts(config), torch.bfloat16,
                                   kv_cache_dtype, ShapesBackend.name, "pytorch", parallel,
                                   prefix_groups=True, device=torch.device("cpu"))
    return build()


@pytest.mark.usefixtures("shapes_backend")
def test_the_shapes_come_from_the_model_config_before_any_weight() -> None:
    llama = shapes_for(LLAMA_31_V4)  # 32 query heads over 8 KV heads of 128
    assert llama == KernelShapes(torch.bfloat16, torch.bfloat16, 128, 4, frozenset({False}),
                                 prefix_groups=True)
    assert shapes_for(LLAMA_31_V4, tp_size=8).query_group == 4  # 4 over 1 on each rank
    assert shapes_for(LLAMA_31_V4, tp_size=16).query_group == 2  # KV heads replicated
    assert shapes_for(LLAMA_31_V4, kv_cache_dtype="fp8_e4m3").kv_dtype == torch.float8_e4m3fn
    qwen2 = {**LLAMA_31_V4, "architectures": ["Qwen2ForCausalLM"], "use_sliding_window": True,
             "sliding_window": 4096, "max_window_layers": 28}
    assert shapes_for(qwen2).windowed == frozenset({False, True})  # layers 28+ slide


def test_the_pytorch_sampler_has_no_kernel_to_build() -> None:
    assert SAMPLING_BACKENDS.get("pytorch").kernel_builds() == []


@pytest.mark.skipif(importlib.util.find_spec("flashinfer") is None,
                    reason="needs flashinfer (its sampling module's build also needs nvcc)")
def test_flashinfer_names_its_sampling_module_getter() -> None:
    [build] = SAMPLING_BACKENDS.get("flashinfer").kernel_builds()
    assert build is importlib.import_module("flashinfer.sampling").get_sampling_module
