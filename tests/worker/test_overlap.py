"""Launching step N + 1 before finishing step N (the overlapped worker) changes no token."""

from __future__ import annotations

import itertools

import pytest

from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.cuda_graph import graph_batch_sizes
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan

PROMPTS = {"a": [5, 9, 13, 2, 7], "b": [3, 3, 8]}
NUM_DECODES = 6


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model(tmp_path_factory.mktemp("overlap") / "llama", "llama", num_layers=2)


def plans(sampling: dict[str, SamplingParams]) -> list[StepPlan]:
    """A prefill of both prompts, then decodes; page size 1, so one page per token."""
    next_page = iter(range(1, 1000))
    first = StepPlan(1)
    for rid, ids in PROMPTS.items():
        first.new_requests.append(NewRequest(rid, tuple(ids), len(ids), 0, (), sampling[rid]))
        first.page_writes.append(PageTableWrite(rid, 0, tuple(next(next_page) for _ in ids)))
        first.extends.append(ExtendChunk(rid, 0, len(ids), True))
    steps = [first]
    for step in range(NUM_DECODES):
        plan = StepPlan(step + 2, decodes=list(PROMPTS))
        for rid, ids in PROMPTS.items():
            plan.page_writes.append(PageTableWrite(rid, len(ids) + step, (next(next_page),)))
        steps.append(plan)
    return steps


def run(model_dir, sampling, overlapped: bool) -> list[tuple[list[str], list[int]]]:
    runner = ModelRunner(WorkerConfig(model_path=str(model_dir), device="cpu"), model_dir)
    results = []
    if not overlapped:
        for plan in plans(sampling):
            result = runner.execute(plan)
            results.append((result.rids, result.next_token_ids))
        return results
    inflight = None
    for plan in plans(sampling):
        launched = runner.launch(plan)  # reads the tokens `inflight` sampled, still unread
        if inflight is not None:
            result = runner.finish(inflight)
            results.append((result.rids, result.next_token_ids))
        inflight = launched
    result = runner.finish(inflight)
    results.append((result.rids, result.next_token_ids))
    return results


@pytest.mark.parametrize("seeded", [False, True])
def test_launch_before_finish_gives_the_sequential_tokens(model_dir, seeded):
    sampling = {rid: SamplingParams(temperature=0.9, seed=7 + i) if seeded
                else SamplingParams(temperature=0.0) for i, rid in enumerate(PROMPTS)}
    sequential = run(model_dir, sampling, overlapped=False)
    assert run(model_dir, sampling, overlapped=True) == sequential
    assert [rids for rids, _ in sequential] == [list(PROMPTS)] * (NUM_DECODES + 1)


def test_graph_batch_sizes_cover_every_size_once():
    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(6) == [1, 2, 4, 6]
    sizes = graph_batch_sizes(256)
    assert sizes[:5] == [1, 2, 4, 8, 16] and sizes[-1] == 256
    assert all(b - a <= 8 for a, b in itertools.pairwise(sizes))
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    large = graph_batch_sizes(1024)
    assert large[-1] == 1024 and 272 in large and 544 in large
    # Strides grow with the size, so padding stays a small share of the batch.
    assert all(b - a <= max(8, a // 16) for a, b in itertools.pairwise(large))
