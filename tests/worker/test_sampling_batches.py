"""SamplingBatches: a step that samples the same requests in the same order reuses the last
batch with new output positions; any other step builds anew. Either way the batch equals
what SamplingBatch.build makes of the rows."""

from __future__ import annotations

import dataclasses

import torch

from radixmesh.services.worker.sampling import SamplingBatch
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatches
from radixmesh.shared.sampling_params import SamplingParams


@dataclasses.dataclass
class Row:
    sampling: SamplingParams
    seed: int
    slot: int
    num_outputs: int = 1

    @property
    def drawing_output_index(self) -> int:
        return self.num_outputs - 1


def assert_built_from(batch: SamplingBatch, rows: list[Row]) -> None:
    fresh = SamplingBatch.build([r.sampling for r in rows], [r.seed for r in rows],
                                [r.drawing_output_index for r in rows],
                                [r.slot for r in rows], "cpu")
    for field in dataclasses.fields(SamplingBatch):
        ours, theirs = getattr(batch, field.name), getattr(fresh, field.name)
        if isinstance(ours, torch.Tensor):
            assert torch.equal(ours, theirs), field.name
        else:
            assert ours == theirs, field.name


def test_same_rows_reuse_the_batch_with_new_positions() -> None:
    rows = [Row(SamplingParams(temperature=0.7, top_p=0.9), 11, 0),
            Row(SamplingParams(), 12, 1),
            Row(SamplingParams(top_k=5, seed=3, frequency_penalty=0.5), 3, 2)]
    batches = SamplingBatches("cpu")
    first = batches.build(rows)
    assert_built_from(first, rows)
    for row in rows:
        row.num_outputs += 1
    second = batches.build(rows)
    assert second.temperatures is first.temperatures  # reused, not rebuilt
    assert second.output_positions.tolist() == [1, 1, 1]
    assert first.output_positions.tolist() == [0, 0, 0]  # the last step's batch untouched
    assert_built_from(second, rows)


def test_other_rows_build_anew() -> None:
    a, b = Row(SamplingParams(temperature=0.5), 1, 0), Row(SamplingParams(), 2, 1)
    batches = SamplingBatches("cpu")
    first = batches.build([a, b])
    for rows in ([b, a], [a], [a, b, Row(SamplingParams(top_k=3), 3, 2)],
                 [a, Row(SamplingParams(), 2, 1)]):  # an equal request, yet another one
        batch = batches.build(rows)
        assert batch.temperatures is not first.temperatures
        assert_built_from(batch, rows)
