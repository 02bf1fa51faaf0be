"""FP8 on a GPU with FP8 tensor cores (compute capability 8.9+): the `torch._scaled_mm` path in
whole models, against the dequantizing path on the same FP8 weights. Skipped elsewhere."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.loader import load_model
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.quantization import fp8
from tests.quantization.common import (
    e4m3_rms_error,
    prefill_logits,
    random_tokens,
    relative_errors,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (torch.cuda.is_available() and fp8.fp8_gemm_capable("cuda")),
    reason="needs a CUDA device of compute capability 8.9+")]


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("gpu-fp8") / "llama", "llama", hidden_size=256,
                      num_heads=4, num_kv_heads=2, intermediate_size=512, num_layers=4,
                      dtype="bfloat16", seed=2, quantization="fp8")


def test_scaled_mm_logits_are_the_dequantized_paths_within_activation_rounding(
        fp8_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same FP8 weights; the paths differ only in rounding each GEMM's input to e4m3 per token
    on the FP8 path. By the argument of test_fp8_logits_stay_within_the_error_e4m3_implies
    (one independent e4m3 rounding per GEMM, G GEMMs, errors in quadrature) the expected
    relative logit difference is eps * sqrt(G); allowed: a mean of 1.5x, a worst token of 3.5x,
    and a mean of at least 0.1x (the FP8 path really ran)."""
    config = ModelConfig.from_pretrained(fp8_model)
    model = load_model(config, fp8_model, device="cuda")
    tokens = random_tokens(config.vocab_size, 64, seed=4)

    fp8_path = prefill_logits(model, config, tokens, device="cuda")
    monkeypatch.setattr(fp8, "scaled_mm_usable", lambda x, weight: False)
    dequantized = prefill_logits(model, config, tokens, device="cuda")

    estimate = e4m3_rms_error() * math.sqrt(4 * config.num_hidden_layers)
    errors = relative_errors(fp8_path, dequantized)
    assert 0.1 * estimate <= errors.mean() <= 1.5 * estimate
    assert errors.max() <= 3.5 * estimate
    assert not fp8._scaled_mm_failed


def test_the_engine_generates_on_fp8_gemms_in_cuda_graphs(fp8_model: Path) -> None:
    engine = Engine(WorkerConfig(model_path=str(fp8_model), device="cuda"))
    body = {"input_ids": [3, 1, 4, 1, 5, 9, 2, 6], "max_new_tokens": 24, "temperature": 0,
            "ignore_eos": True}

    first, again = engine.generate([body, body])

    assert len(first.token_ids) == 24 and first.token_ids == again.token_ids
    assert engine.runner.graph_runner is not None and not fp8._scaled_mm_failed
