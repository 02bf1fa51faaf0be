"""Greedy generation with the Triton backend equals the torch backend's, on the GPU in fp32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.attention import ATTENTION_BACKENDS
from radixmesh.services.worker.config import WorkerConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif("triton" not in ATTENTION_BACKENDS,
                                 reason="needs a CUDA device and triton")]

SHARED = "The quick brown fox jumps over the lazy dog while the cache keeps every page it saw. "
PROMPTS = [SHARED * 3 + "Once upon a time", SHARED * 3 + "In a galaxy far away", "Hello",
           "Paged attention keeps keys and values in fixed-size pages " * 6]
MODELS = {
    # head_dim 64 with GQA 8/2; long enough context for multi-page, multi-block sequences
    "llama": dict(arch="llama", hidden_size=512, num_heads=8, num_kv_heads=2),
    "mistral-sliding": dict(arch="mistral", hidden_size=256, num_heads=4, num_kv_heads=4,
                            sliding_window=24),
}


def generate(model: Path, backend: str, page_size: int) -> list[list[int]]:
    engine = Engine(
        WorkerConfig(model_path=str(model), device="cuda", attention_backend=backend,
                     page_size=page_size, max_total_tokens=8192,
                     cuda_graph_max_bs=8),  # a few prompts: 67 graph captures would be slow
        # Small chunks: prompts are prefilled in pieces over cached prefixes, next to decodes.
        SchedulerConfig(chunked_prefill_size=48))
    bodies = [{"text": text, "max_new_tokens": 40, "temperature": 0, "ignore_eos": True}
              for text in PROMPTS]
    # Twice: the second round's prompts hit the radix cache (extends over a cached prefix).
    outputs = [c.token_ids for c in engine.generate(bodies) + engine.generate(bodies)]
    assert engine.runner.backend.name == backend
    return outputs


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_greedy_output_matches_torch_backend(tmp_path, model_name, page_size):
    options = dict(MODELS[model_name])
    model = make_model(tmp_path / model_name, options.pop("arch"), num_layers=2, **options)
    expected = generate(model, "torch", page_size)
    got = generate(model, "triton", page_size)
    assert got == expected
    assert all(len(ids) == 40 for ids in got)
    torch.cuda.empty_cache()
