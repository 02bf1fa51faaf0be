"""Background JIT kernel builds: one compiler run for every module beside the caller, then
the loads; a failure is logged and left for the first use; the sampling backends name theirs."""

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
from radixmesh.services.worker.jit_module import JitModule
from radixmesh.services.worker.kernel_builds import BackgroundKernelBuilds, worker_kernel_builds
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel
from radixmesh.services.worker.sampling import SAMPLING_BACKENDS
from tests.worker.test_model_config import LLAMA_31_V4


def test_the_modules_are_built_in_one_run_beside_the_caller_then_loaded() -> None:
    caller_went_on = threading.Event()
    events: list[object] = []

    def build_specs(specs: list) -> None:  # ends only once the caller went on
        assert caller_went_on.wait(10)
        events.append(("built", tuple(specs)))

    modules = [JitModule(name, spec=lambda name=name: f"spec-{name}",
                         load=lambda name=name: events.append(("loaded", name)))
               for name in ("prefill", "sampling")]
    builds = BackgroundKernelBuilds(modules, build_specs)
    caller_went_on.set()
    assert builds.wait() is True
    assert events == [("built", ("spec-prefill", "spec-sampling")), ("loaded", "prefill"),
                      ("loaded", "sampling")]
    assert builds.failures == [] and builds.seconds > 0


def test_a_failed_build_is_logged_and_the_loads_are_left_for_first_use(
        caplog: pytest.LogCaptureFixture) -> None:
    loaded: list[str] = []

    def broken(specs: list) -> None:
        raise RuntimeError("nvcc: not found")

    module = JitModule("prefill", spec=lambda: "spec", load=lambda: loaded.append("prefill"))
    with caplog.at_level(logging.WARNING):
        builds = BackgroundKernelBuilds([module], broken)
        builds.wait()
    assert loaded == []
    assert [str(error) for error in builds.failures] == ["nvcc: not found"]
    assert "RuntimeError: nvcc: not found" in caplog.text


def test_no_modules_start_no_thread() -> None:
    builds = BackgroundKernelBuilds([])
    assert builds.wait() is False and builds._thread is None


def test_torch_attention_and_pytorch_sampling_build_nothing() -> None:
    config = ModelConfig.from_dicts(LLAMA_31_V4)
    assert worker_kernel_builds(config, torch.float32, "auto", "torch", "pytorch", SINGLE,
                                prefix_groups=False, device=torch.device("cpu")) == []


class ShapesBackend(TorchAttentionBackend):
    """Builds nothing; its one module's load hands back the shapes it was asked to build for."""

    name = "test-shapes"

    @classmethod
    def kernel_builds(cls, shapes: KernelShapes, device: torch.device) -> list:
        return [JitModule("shapes", spec=lambda: None, load=lambda: shapes)]


@pytest.fixture
def shapes_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """ShapesBackend registered for one test only (the registry is the process's)."""
    monkeypatch.setitem(ATTENTION_BACKENDS._entries, ShapesBackend.name, ShapesBackend)


def shapes_for(config: dict, tp_size: int = 1, kv_cache_dtype: str = "auto") -> KernelShapes:
    parallel = TensorParallel(rank=tp_size - 1, size=tp_size)  # the last rank: any rank's share
    [module] = worker_kernel_builds(ModelConfig.from_dicts(config), torch.bfloat16,
                                    kv_cache_dtype, ShapesBackend.name, "pytorch", parallel,
                                    prefix_groups=True, device=torch.device("cpu"))
    return module.load()


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
def test_flashinfer_names_its_sampling_module() -> None:
    [module] = SAMPLING_BACKENDS.get("flashinfer").kernel_builds()
    sampling = importlib.import_module("flashinfer.sampling")
    assert module.spec is sampling.gen_sampling_module
    assert module.load is sampling.get_sampling_module
