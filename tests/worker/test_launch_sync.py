"""On a GPU, launching a decode step never waits for the device (issue 16: the worker keeps the
next step queued while the device runs this one; one hidden synchronisation in the launch path
would serialize host and device). torch's sync debug mode turns every synchronising call
made through torch (`.item()`, `.tolist()`, a blocking copy) into an error."""

from __future__ import annotations

import pytest
import torch

from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PROMPTS = {"a": [5, 9, 13, 2, 7], "b": [3, 3, 8]}  # one page of 16 each, decodes included
NUM_DECODES = 6


def plans() -> list[StepPlan]:
    first = StepPlan(1)
    for page, (rid, ids) in enumerate(PROMPTS.items(), start=1):
        sampling = SamplingParams(temperature=0.7 if rid == "a" else 0.0)
        first.new_requests.append(NewRequest(rid, tuple(ids), len(ids), 0, (), sampling))
        first.page_writes.append(PageTableWrite(rid, 0, (page,)))
        first.extends.append(ExtendChunk(rid, 0, len(ids), True))
    return [first, *(StepPlan(step + 2, decodes=list(PROMPTS)) for step in range(NUM_DECODES))]


@pytest.mark.parametrize("attention_backend", ["auto", "triton"])
def test_launching_a_decode_step_never_waits_for_the_device(tmp_path, attention_backend):
    model_dir = make_model(tmp_path / "llama", "llama", num_layers=2)
    runner = ModelRunner(WorkerConfig(model_path=str(model_dir), device="cuda",
                                      dtype="bfloat16", page_size=16,
                                      attention_backend=attention_backend), model_dir)
    steps = plans()
    runner.execute(steps[0])
    runner.execute(steps[1])  # the first decode of this batch size: its graph is warm now
    torch.cuda.synchronize()
    inflight = None
    for plan in steps[2:]:
        torch.cuda.set_sync_debug_mode("error")
        try:
            launched = runner.launch(plan)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if inflight is not None:
            result = runner.finish(inflight)  # waits by design: the step's tokens are read
            assert result.rids == list(PROMPTS)
        inflight = launched
    assert runner.finish(inflight).rids == list(PROMPTS)
