"""Pages backed up to the host pool and loaded back give the tokens a recompute gives, and a
plan's copies are checked before any byte moves (services/worker/host_kv.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.host_kv import NO_LOADS, HostKV, PendingLoads, pool_layout
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.model_runner import ModelRunner
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.services.worker.request_table import PlanError
from radixmesh.shared.host_pool import HostPool, HostPoolError
from radixmesh.shared.page_keys import weights_fingerprint
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import (
    NO_COPIES,
    ExtendChunk,
    HostPoolAttachment,
    NewRequest,
    PageCopies,
    PageTableWrite,
    StepPlan,
    StepResult,
    WorkerInfo,
)

PAGE = 4
SLOTS = 8
PROMPT = (5, 9, 13, 2, 7, 11, 3, 8, 21, 4, 6, 10, 14, 17)  # three full pages, then two tokens
LONG = tuple(range(30, 50))  # a long prefill after the prompt's three full pages


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("host_kv") / "llama", "llama", num_layers=2)


def make_runner(model_dir: Path, device: str, **flags: object) -> ModelRunner:
    config = WorkerConfig(model_path=str(model_dir), device=device, page_size=PAGE,
                          max_total_tokens=64 * PAGE, **flags)
    return ModelRunner(config, model_dir)


def prefill(rid: str, token_ids: tuple[int, ...], cached_pages: tuple[int, ...],
            new_pages: tuple[int, ...]) -> dict[str, list]:
    cached = len(cached_pages) * PAGE
    return {"new_requests": [NewRequest(rid, token_ids, len(token_ids), cached, cached_pages,
                                        SamplingParams(temperature=0.0))],
            "page_writes": [PageTableWrite(rid, len(cached_pages), new_pages)],
            "extends": [ExtendChunk(rid, cached, len(token_ids) - cached, True)]}


class Stepper:
    """Runs plans with consecutive step ids; every result's backed_up_through must be monotonic
    and never past its step (on a CPU worker, exactly its step: backups land at once)."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.step_id = self.backed_up = 0

    def __call__(self, *parts: dict[str, list], **fields: object) -> StepResult:
        self.step_id += 1
        for part in parts:
            for key, values in part.items():
                fields[key] = [*fields.get(key, []), *values]  # type: ignore[misc]
        result = self.runner.execute(StepPlan(self.step_id, **fields))  # type: ignore[arg-type]
        assert self.backed_up <= result.backed_up_through <= self.step_id
        if self.runner.device.type == "cpu":
            assert result.backed_up_through == self.step_id
        self.backed_up = result.backed_up_through
        return result

    def wait_for_backups(self) -> None:
        target, deadline = self.step_id, time.monotonic() + 10
        while self.backed_up < target:  # empty steps only ask how far the backups got
            assert time.monotonic() < deadline, "backups never landed"
            self()


@contextmanager
def shared_pool(kv: KVPool, unmap: Callable[[], None], num_slots: int = SLOTS
                ) -> Iterator[HostPool]:
    """A host pool for `kv`'s pages, as the hicache service creates it; `unmap` (the worker's
    close) runs first at the end, since a pool cannot close while the worker maps it."""
    with HostPool.create(None, pool_layout(kv, num_slots)) as pool:
        try:
            yield pool
        finally:
            unmap()


def page_bytes(kv: KVPool, pages: tuple[int, ...]) -> torch.Tensor:
    """[layer, K/V, page, token, head, dim] of `pages`, as bytes, on the host."""
    shape = (kv.num_pages + 1, kv.page_size, kv.num_kv_heads, kv.head_dim)
    index = torch.tensor(pages, device=kv.device)
    return torch.stack([torch.stack((kv.keys(layer).view(shape)[index],
                                     kv.values(layer).view(shape)[index]))
                        for layer in range(kv.num_layers)]).cpu().view(torch.uint8)


def slot_bytes(pool: HostPool, slots: tuple[int, ...], rank: int = 0) -> torch.Tensor:
    """The same layout as page_bytes, read from tensor-parallel rank `rank`'s part of the host
    pool's slots."""
    return (pool.tensor()[list(slots), rank].permute(1, 2, 0, 3, 4, 5).contiguous()
            .view(torch.uint8))


def check_reload(runner: ModelRunner) -> None:
    """Prefill a, back up its full pages, then reload them into other pages: the requests over
    reloaded pages sample what a recompute (a) and a read of a's own pages (b, d) sample."""
    step = Stepper(runner)
    with shared_pool(runner.kv_pool, runner.close) as pool:
        attach = HostPoolAttachment(pool.name, SLOTS)
        a1 = step(prefill("a", PROMPT, (), (1, 2, 3, 4)), host_pool=attach).next_token_ids
        a2 = step(decodes=["a"], backups=PageCopies((1, 2, 3), (5, 6, 7))).next_token_ids
        step.wait_for_backups()
        assert torch.equal(slot_bytes(pool, (5, 6, 7)), page_bytes(runner.kv_pool, (1, 2, 3)))
        # The loads ride on a decode step (a replayed CUDA graph on a GPU); c reads them next.
        b1 = step(prefill("b", PROMPT, (1, 2, 3), (8,)), released=["a"]).next_token_ids
        b2 = step(decodes=["b"], loads=PageCopies((10, 11, 12), (5, 6, 7))).next_token_ids
        c1 = step(prefill("c", PROMPT, (10, 11, 12), (13,))).next_token_ids
        c2 = step(decodes=["c"]).next_token_ids
        assert a1 == b1 == c1 and a2 == b2 == c2
        assert torch.equal(page_bytes(runner.kv_pool, (10, 11, 12)),
                           page_bytes(runner.kv_pool, (1, 2, 3)))
        # A long prefill whose prefix loads in the same step, layer by layer under its pass,
        # beside the same prefill over a's pages.
        tokens = PROMPT[:12] + LONG
        first = step(prefill("d", tokens, (1, 2, 3), (20, 21, 22, 23, 24)),
                     prefill("e", tokens, (15, 16, 17), (25, 26, 27, 28, 29)),
                     released=["b", "c"], loads=PageCopies((15, 16, 17), (5, 6, 7)))
        second = step(decodes=["d", "e"], page_writes=[PageTableWrite("d", 8, (30,)),
                                                       PageTableWrite("e", 8, (31,))])
        assert first.next_token_ids[0] == first.next_token_ids[1]
        assert second.next_token_ids[0] == second.next_token_ids[1]
        step(released=["d", "e"])
        assert runner.num_requests == 0


def test_reloaded_pages_give_the_recomputed_tokens(model_dir, monkeypatch):
    waited: list[int] = []
    wait = PendingLoads.wait_for_layer

    def spy(self: PendingLoads, layer_id: int) -> None:
        if self is not NO_LOADS:
            waited.append(layer_id)
        wait(self, layer_id)

    monkeypatch.setattr(PendingLoads, "wait_for_layer", spy)
    check_reload(make_runner(model_dir, "cpu"))
    assert waited == [0, 1] * 2  # each pass with loads: every layer asked for its pages


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reloaded_pages_give_the_recomputed_tokens_on_cuda(tmp_path):
    # head_dim 64, the smallest the GPU kernel tests cover; a few graphs keep the capture short.
    model = make_model(tmp_path / "llama", "llama", num_layers=2, hidden_size=256, num_heads=4)
    runner = make_runner(model, "cuda", cuda_graph_max_bs=8)
    assert runner.graph_runner is not None  # the decode with loads is replayed
    check_reload(runner)


def test_a_bad_copy_fails_before_anything_changes(model_dir):
    runner = make_runner(model_dir, "cpu")
    num_pages = runner.kv_pool.num_pages
    with shared_pool(runner.kv_pool, runner.close) as pool:
        runner.execute(StepPlan(1, host_pool=HostPoolAttachment(pool.name, SLOTS),
                                **prefill("a", PROMPT, (), (1, 2, 3, 4))))
        kv_before, host_before = page_bytes(runner.kv_pool, (1, 2, 3, 4, 9)), slot_bytes(pool, (1,))
        for field, copies, error in (
                ("loads", PageCopies((9,), (SLOTS + 1,)), "host slots .* out of range"),
                ("loads", PageCopies((9,), (0,)), "host slots .* out of range"),
                ("backups", PageCopies((0,), (1,)), "device pages .* out of range"),
                ("backups", PageCopies((num_pages + 1,), (1,)), "device pages .* out of range"),
                ("loads", PageCopies((9, 9), (1, 2)), "same place"),
                ("backups", PageCopies((1, 2), (3, 3)), "same place")):
            with pytest.raises(PlanError, match=error):
                runner.execute(StepPlan(2, released=["a"], **{field: copies},
                                        **prefill("x", PROMPT, (), (9, 10, 11, 12))))
            assert set(runner.table.requests) == {"a"}  # neither released nor registered
        runner.execute(StepPlan(2, host_pool=HostPoolAttachment("", 0)))
        with pytest.raises(PlanError, match="no host pool is mapped"):
            runner.execute(StepPlan(3, backups=PageCopies((1,), (1,))))
        assert torch.equal(page_bytes(runner.kv_pool, (1, 2, 3, 4, 9)), kv_before)
        assert torch.equal(slot_bytes(pool, (1,)), host_before)
    with pytest.raises(ValueError, match="2 device pages for 1 host slots"):
        PageCopies((1, 2), (3,))


def test_info_names_the_kv_layout_and_the_weights(model_dir):
    info = make_runner(model_dir, "cpu").info()
    assert (info.num_layers, info.num_kv_heads, info.head_dim) == (2, 2, 16)
    assert info.weights_fingerprint == weights_fingerprint(model_dir, dummy_seed=None)
    dummy = make_runner(model_dir, "cpu", load_format="dummy", random_seed=3).info()
    assert dummy.weights_fingerprint == weights_fingerprint(model_dir, dummy_seed=3)
    assert dummy.weights_fingerprint != info.weights_fingerprint


def test_overlapped_results_report_their_own_step(model_dir):
    runner = make_runner(model_dir, "cpu")
    first = runner.launch(StepPlan(1, **prefill("a", PROMPT, (), (1, 2, 3, 4))))
    second = runner.launch(StepPlan(2, decodes=["a"]))
    assert runner.finish(first).backed_up_through == 1  # step 2 is done too, but not reported
    assert runner.finish(second).backed_up_through == 2


def random_kv(dtype: torch.dtype, page_size: int, num_kv_heads: int, head_dim: int) -> KVPool:
    kv = KVPool(8, page_size, 2, num_kv_heads, head_dim, dtype, "cpu")
    for buffer in kv.k_buffers + kv.v_buffers:
        buffer.copy_(torch.randn(buffer.shape).to(dtype))
    return kv


@pytest.mark.parametrize("dtype,page_size,num_kv_heads,head_dim", [
    (torch.float32, PAGE, 2, 16), (torch.bfloat16, 1, 1, 3), (torch.float16, 3, 1, 5)])
def test_pages_round_trip_through_the_host_pool_bit_for_bit(dtype, page_size, num_kv_heads,
                                                            head_dim):
    kv = random_kv(dtype, page_size, num_kv_heads, head_dim)
    host = HostKV(kv)
    with shared_pool(kv, host.close, num_slots=4) as pool:
        host.attach(HostPoolAttachment(pool.name, 4))
        host.backup(1, PageCopies((2, 5), (4, 1)))
        assert host.backed_up_through == 1
        assert torch.equal(slot_bytes(pool, (4, 1)), page_bytes(kv, (2, 5)))
        host.load(PageCopies((7, 3), (4, 1))).wait_all()
        assert torch.equal(page_bytes(kv, (7, 3)), page_bytes(kv, (2, 5)))


def test_tensor_parallel_ranks_each_fill_their_part_of_a_slot():
    """Two ranks' pools (each its KV heads) back up the same pages into one host pool, each
    into its part of every slot, and load back their own part only."""
    ranks = [random_kv(torch.float32, PAGE, 1, 16) for _ in range(2)]
    hosts = [HostKV(kv, tp_rank=rank, tp_size=2) for rank, kv in enumerate(ranks)]
    layout = pool_layout(ranks[0], 4, tp_size=2)
    with HostPool.create(None, layout) as pool:
        try:
            for host in hosts:
                host.attach(HostPoolAttachment(pool.name, 4))
                host.backup(1, PageCopies((2, 5), (4, 1)))
            for rank, kv in enumerate(ranks):
                assert torch.equal(slot_bytes(pool, (4, 1), rank), page_bytes(kv, (2, 5)))
            assert not torch.equal(page_bytes(ranks[0], (2,)), page_bytes(ranks[1], (2,)))
            for host, kv in zip(hosts, ranks, strict=True):
                host.load(PageCopies((7, 3), (4, 1))).wait_all()
                assert torch.equal(page_bytes(kv, (7, 3)), page_bytes(kv, (2, 5)))
        finally:
            for host in hosts:
                host.close()


def test_attach_replaces_and_an_empty_name_detaches():
    kv = random_kv(torch.float32, PAGE, 2, 16)
    host = HostKV(kv)
    layout = pool_layout(kv, 4)
    with HostPool.create(None, layout) as first, HostPool.create(None, layout) as second:
        host.attach(HostPoolAttachment(first.name, 4))
        host.backup(1, PageCopies((1,), (2,)))
        host.attach(HostPoolAttachment(second.name, 4))
        first.close()  # the worker holds nothing of the pool it left
        host.backup(2, PageCopies((3,), (2,)))
        assert torch.equal(slot_bytes(second, (2,)), page_bytes(kv, (3,)))
        host.attach(HostPoolAttachment("", 0))
        assert host.num_slots == 0
        second.close()
        with pytest.raises(PlanError, match="no host pool is mapped"):
            host.check(StepPlan(3, loads=PageCopies((1,), (1,))))
    with pytest.raises(HostPoolError, match="no shared memory"):
        host.attach(HostPoolAttachment("rmx-test-absent-pool", 4))


def test_backed_up_through_counts_steps_and_restarts_with_a_new_stream():
    host = HostKV(random_kv(torch.float32, PAGE, 2, 16))
    assert host.backed_up_through == 0
    host.backup(1, NO_COPIES)
    host.backup(2, NO_COPIES)
    assert host.backed_up_through == 2
    host.backup(-1, NO_COPIES)  # the servicer's release after a stream ended
    assert host.backed_up_through == -1
    host.backup(1, NO_COPIES)  # the next scheduler counts from 1 again
    assert host.backed_up_through == 1


def test_null_worker_checks_copies_and_lands_them_at_once():
    worker = NullWorker(WorkerInfo("m", 16, PAGE, 128, 100, (0,), "none", 8))
    attach = HostPoolAttachment("pool", 4)
    result = worker.execute(StepPlan(1, host_pool=attach, backups=PageCopies((1,), (4,))))
    assert result.backed_up_through == 1
    with pytest.raises(PlanError, match="host slots .* out of range"):
        worker.execute(StepPlan(2, loads=PageCopies((1,), (5,))))
    worker.execute(StepPlan(2, host_pool=HostPoolAttachment("", 0)))
    with pytest.raises(PlanError, match="no host pool is mapped"):
        worker.execute(StepPlan(3, backups=PageCopies((1,), (1,))))
