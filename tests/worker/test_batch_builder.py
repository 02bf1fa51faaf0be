"""The worker's step rows and forward batch, on the CPU: extends are laid out per token, decodes
are built with vectorised ops from the slot list and the device page table; both must give
exactly what the per-row definition (ForwardBatch's docstring) says."""

from __future__ import annotations

import pytest
import torch

from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.batch_builder import build_forward_batch
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.page_table import DevicePageTable
from radixmesh.services.worker.request_table import PlanError, RequestTable
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan

PAGE = 4


class Worker:
    """The host side of a model worker: request table, device page table, batch building."""

    def __init__(self) -> None:
        self.page_table = DevicePageTable(8, 16, torch.device("cpu"))
        self.table = RequestTable(8, lambda: 0, on_pages=lambda req, start, pages:
                                  self.page_table.write(req.slot, start, pages))
        self.kv_pool = KVPool(64, PAGE, 1, 1, 8, torch.float32, "cpu")
        self.last_tokens = torch.zeros(8, dtype=torch.int64)

    def step(self, plan: StepPlan, sampled: list[int]) -> ForwardBatch:
        rows = self.table.apply(plan)
        batch = build_forward_batch(rows, self.kv_pool, TorchAttentionBackend(self.kv_pool),
                                    self.last_tokens, self.page_table)
        slots = torch.tensor([req.slot for req in rows.sampled])
        self.last_tokens[slots] = torch.tensor(sampled)
        self.table.commit(plan, rows, sampled)
        return batch


def new(rid: str, tokens: list[int]) -> NewRequest:
    return NewRequest(rid, tuple(tokens), len(tokens), 0, (), SamplingParams(max_new_tokens=8))


def expected(rows: list[tuple[list[int], int, int]]) -> dict[str, list]:
    """The per-row definition: (page table, start, length) per row, every row sampled."""
    out: dict[str, list] = {"positions": [], "out_cache_loc": [], "seq_lens": [],
                            "extend_starts": [], "logits_indices": []}
    for pages, start, length in rows:
        out["extend_starts"].append(len(out["positions"]))
        for pos in range(start, start + length):
            out["positions"].append(pos)
            out["out_cache_loc"].append(pages[pos // PAGE] * PAGE + pos % PAGE)
        out["seq_lens"].append(start + length)
        out["logits_indices"].append(len(out["positions"]) - 1)
    return out


def check(batch: ForwardBatch, rows: list[tuple[list[int], int, int]]) -> None:
    want = expected(rows)
    assert batch.out_cache_loc.dtype == batch.positions.dtype == torch.int64
    assert batch.seq_lens.dtype == batch.extend_starts.dtype == torch.int32
    for name, values in want.items():
        assert getattr(batch, name).tolist() == values, name
    assert batch.seq_lens_cpu == want["seq_lens"]
    assert batch.extend_lens_cpu == batch.extend_lens.tolist() == [n for _, _, n in rows]
    width = max(-(-n // PAGE) for n in want["seq_lens"])
    assert batch.page_table.tolist() == [(pages + [0] * width)[:width] for pages, _, _ in rows]


@pytest.fixture()
def worker() -> Worker:
    w = Worker()
    w.step(StepPlan(1, new_requests=[new("a", list(range(10, 20))), new("b", [5, 6, 7, 8, 9])],
                    page_writes=[PageTableWrite("a", 0, (3, 7, 9)), PageTableWrite("b", 0, (5, 2))],
                    extends=[ExtendChunk("a", 0, 10, True), ExtendChunk("b", 0, 5, True)]),
           sampled=[100, 200])
    return w


def test_decodes_read_their_pages_off_the_device_table(worker: Worker) -> None:
    batch = worker.step(StepPlan(2, decodes=["b", "a"]), sampled=[201, 101])
    assert batch.mode is ForwardMode.DECODE
    assert batch.input_ids.tolist() == [200, 100]  # the tokens sampled last step, by slot
    check(batch, [([5, 2], 5, 1), ([3, 7, 9], 10, 1)])
    batch = worker.step(StepPlan(3, decodes=["a", "b"]), sampled=[102, 202])
    check(batch, [([3, 7, 9], 11, 1), ([5, 2], 6, 1)])
    # a's next token opens a page: the grant lands before the batch reads the table.
    batch = worker.step(StepPlan(4, page_writes=[PageTableWrite("a", 3, (11,))],
                                 decodes=["a"]), sampled=[103])
    assert batch.input_ids.tolist() == [102]
    check(batch, [([3, 7, 9, 11], 12, 1)])
    assert batch.out_cache_loc.tolist() == [11 * PAGE]


def test_a_mixed_step_puts_extends_first_then_decodes(worker: Worker) -> None:
    plan = StepPlan(2, new_requests=[new("c", [1, 2, 3, 4, 5, 6])],
                    page_writes=[PageTableWrite("c", 0, (20, 21))],
                    extends=[ExtendChunk("c", 0, 6, True)], decodes=["a", "b"])
    batch = worker.step(plan, sampled=[300, 101, 201])
    assert batch.mode is ForwardMode.MIXED and batch.num_extends == 1
    assert batch.input_ids.tolist() == [1, 2, 3, 4, 5, 6, 100, 200]
    check(batch, [([20, 21], 0, 6), ([3, 7, 9], 10, 1), ([5, 2], 5, 1)])
    assert worker.table.get("c").token_ids[-1] == 300
    assert worker.table.get("a").token_ids[-1] == 101


def test_a_decode_that_does_not_follow_the_state_is_refused(worker: Worker) -> None:
    worker.step(StepPlan(2, decodes=["a"]), sampled=[101])
    with pytest.raises(PlanError, match="unknown request zz"):
        worker.table.apply(StepPlan(3, decodes=["a", "zz"]))
    # Applied but not committed: a's newest token is still pending, which the next step reads.
    worker.table.apply(StepPlan(3, decodes=["a"]))
    worker.table.get("b").kv_len -= 1  # as if a step of b's had been lost
    with pytest.raises(PlanError, match="decode of b with kv_len 4 and 6 tokens"):
        worker.table.apply(StepPlan(4, decodes=["a", "b"]))
