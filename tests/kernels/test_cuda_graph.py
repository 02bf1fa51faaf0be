"""Decode steps replayed from CUDA graphs give the tokens of eager steps."""

from __future__ import annotations

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

PROMPTS = ["The quick brown fox " * (1 + i % 5) + str(i) for i in range(11)]


def generate(model, disable_cuda_graph: bool, backend: str = "triton") -> tuple[list, Engine]:
    engine = Engine(
        WorkerConfig(model_path=str(model), device="cuda", dtype="float32",
                     attention_backend=backend, page_size=16, max_total_tokens=16384,
                     cuda_graph_max_bs=8, disable_cuda_graph=disable_cuda_graph),
        SchedulerConfig())
    # Output lengths differ, so the decode batch shrinks from 11 (eager: above max bs 8)
    # through padded buckets (8, then sizes between buckets) down to 1.
    bodies = [{"text": text, "max_new_tokens": 8 + 6 * i, "temperature": 0, "ignore_eos": True}
              for i, text in enumerate(PROMPTS)]
    return [c.token_ids for c in engine.generate(bodies)], engine


# float32, where eager and replayed kernels must agree exactly: the Triton backend. (FlashInfer
# has no float32 kernels; its own tests compare its graph replays with eager passes.)
@pytest.mark.parametrize("backend", ["triton"])
def test_graph_replay_matches_eager(tmp_path, backend):
    model = make_model(tmp_path / "llama", "llama", num_layers=2, hidden_size=256, num_heads=4,
                       num_kv_heads=2)
    eager, eager_engine = generate(model, disable_cuda_graph=True, backend=backend)
    assert eager_engine.runner.graph_runner is None
    graphed, engine = generate(model, disable_cuda_graph=False, backend=backend)
    runner = engine.runner.graph_runner
    assert runner is not None and runner.batch_sizes == [1, 2, 4, 8]
    assert engine.info.cuda_graph and engine.scheduler.stats.cuda_graph
    assert graphed == eager
    engine.scheduler.check_integrity()
    torch.cuda.empty_cache()
