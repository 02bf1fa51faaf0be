"""A tensor-parallel worker group (rank 0 here, ranks 1..N-1 real processes on gloo) serves
plans exactly as the one-device runner does: the same tokens, greedy and seeded, launched
ahead of finishing; a plan that contradicts the state fails on every rank and the group goes
on; closing the group ends its processes."""

from __future__ import annotations

import pytest

from radixmesh.make_model import make_model
from radixmesh.services.worker.base import ModelWorker
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.parallel.worker_group import TensorParallelWorker
from radixmesh.services.worker.request_table import PlanError
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan
from tests.worker.test_overlap import PROMPTS, plans

SAMPLING = {"greedy": {rid: SamplingParams(temperature=0.0) for rid in PROMPTS},
            "seeded": {rid: SamplingParams(temperature=0.9, seed=7 + i)
                       for i, rid in enumerate(PROMPTS)}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return make_model(tmp_path_factory.mktemp("tp-group") / "qwen2", "qwen2", num_layers=2)


@pytest.fixture(scope="module")
def group(model_dir) -> TensorParallelWorker:
    config = WorkerConfig(model_path=str(model_dir), device="cpu", tp_size=2, tp_timeout=30)
    worker = TensorParallelWorker(config, model_dir)
    yield worker
    worker.close()


def drive(worker: ModelWorker, steps: list[StepPlan]) -> list[tuple[list[str], list[int]]]:
    """Every plan launched before the previous one is finished, as the servicer does."""
    results, inflight = [], None
    for plan in steps:
        launched = worker.launch(plan)
        if inflight is not None:
            result = worker.finish(inflight)
            results.append((result.rids, result.next_token_ids))
        inflight = launched
    result = worker.finish(inflight)
    results.append((result.rids, result.next_token_ids))
    return results


def release_all(worker: ModelWorker) -> None:
    worker.execute(StepPlan(step_id=-1, released=list(PROMPTS)))


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_the_group_gives_the_one_device_tokens(model_dir, group, mode: str) -> None:
    single = ModelRunner(WorkerConfig(model_path=str(model_dir), device="cpu"), model_dir)
    expected = drive(single, plans(SAMPLING[mode]))
    assert drive(group, plans(SAMPLING[mode])) == expected
    release_all(group)
    assert group.num_requests == 0


def test_a_bad_plan_fails_on_every_rank_and_the_group_goes_on(model_dir, group) -> None:
    with pytest.raises(PlanError):
        group.launch(StepPlan(step_id=1, decodes=["nobody"]))
    single = ModelRunner(WorkerConfig(model_path=str(model_dir), device="cpu"), model_dir)
    assert drive(group, plans(SAMPLING["greedy"])) == drive(single, plans(SAMPLING["greedy"]))
    release_all(group)


def test_closing_the_group_ends_its_processes(group) -> None:
    """Last in the module: it closes the shared group (one group per process, as in a worker)."""
    followers = list(group._followers)
    group.close()
    assert all(not process.is_alive() and process.exitcode == 0 for process in followers)
