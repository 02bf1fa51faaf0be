"""The FlashInfer backend against the torch backend on random paged caches, run eagerly and
replayed from CUDA graphs.

FlashInfer compiles each kernel variant (dtype, head_dim, windowed or not) on first use, so the
shapes here are few: head_dim 64 throughout (the engine tests' models too) and one 128 case.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

from radixmesh.services.worker.attention.base import AttentionSpec, KernelShapes
from radixmesh.services.worker.attention.flashinfer_backend import (
    FlashInferAttentionBackend,
    LayerKind,
)
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kernel_builds import BackgroundKernelBuilds
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.prefix_groups import PrefixGroups
from tests.kernels.paged_cases import PagedCase, Shape, make_case

_skip_without_flashinfer = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("flashinfer") is None,
    reason="needs a CUDA device and flashinfer")


def needs_flashinfer(test: Callable) -> Callable:
    return pytest.mark.gpu(_skip_without_flashinfer(test))


DEVICE = "cuda"
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2}
HEADS = {"gqa": (32, 8), "mha": (8, 8)}  # GQA decodes on tensor cores, MHA on CUDA cores
DECODE_LENS = [1, 7, 16, 17, 300, 1100]


def shape_of(heads: str, head_dim: int = 64, page_size: int = 16,
             dtype: torch.dtype = torch.bfloat16, sliding_window: int | None = None) -> Shape:
    num_heads, num_kv_heads = HEADS[heads]
    return Shape(num_heads, num_kv_heads, head_dim, page_size, dtype, sliding_window)


def assert_close_to(got: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), expected, atol=tol, rtol=tol)


def assert_matches_reference(case: PagedCase) -> None:
    expected = case.reference()
    got = case.run(FlashInferAttentionBackend)
    assert got.dtype == case.q.dtype and got.shape == case.q.shape
    assert_close_to(got, expected, case.q.dtype)


SHAPES = [("gqa", 64), ("mha", 64), ("gqa", 128)]


@needs_flashinfer
@pytest.mark.parametrize("heads,head_dim", SHAPES, ids=[f"{h}{d}" for h, d in SHAPES])
@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_matches_torch(page_size, heads, head_dim):
    case = make_case(shape_of(heads, head_dim, page_size), [], DECODE_LENS, DEVICE)
    assert_matches_reference(case)


@needs_flashinfer
@pytest.mark.parametrize("heads,head_dim", SHAPES, ids=[f"{h}{d}" for h, d in SHAPES])
@pytest.mark.parametrize("page_size", [1, 16])
def test_extend_over_cached_prefixes_matches_torch(page_size, heads, head_dim):
    extends = [(0, 1), (0, 70), (5, 33), (16, 16), (700, 100), (1030, 1)]
    case = make_case(shape_of(heads, head_dim, page_size), extends, [], DEVICE)
    assert_matches_reference(case)


@needs_flashinfer
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("page_size", [1, 16])
def test_mixed_batch_matches_torch(page_size, dtype):
    case = make_case(shape_of("gqa", 64, page_size, dtype), [(40, 24), (0, 130)], [1, 33, 1500],
                     DEVICE)
    assert_matches_reference(case)


@needs_flashinfer
@pytest.mark.parametrize("window", [1, 37, 300])
@pytest.mark.parametrize("heads", ["gqa", "mha"])
def test_sliding_window_matches_torch(heads, window):
    case = make_case(shape_of(heads, sliding_window=window), [(0, 90), (50, 40), (400, 70)],
                     [1, 36, 38, 700], DEVICE)
    assert_matches_reference(case)


def test_window_maps_to_flashinfer_window_left():
    def spec(window: int | None) -> AttentionSpec:
        return AttentionSpec(0, 8, 8, 64, 0.125, window)

    assert LayerKind.of(spec(None)).window_left == -1
    assert LayerKind.of(spec(1)).window_left == 0  # the query sees itself only
    assert LayerKind.of(spec(37)).window_left == 36


@needs_flashinfer
def test_layers_of_different_kinds_share_a_pass():
    """A full and a windowed layer in one pass: the second kind is planned when first met,
    and both are planned up front in the next pass."""
    full, windowed = shape_of("gqa"), shape_of("gqa", sliding_window=37)
    case = make_case(full, [(30, 50)], [1, 90, 400], DEVICE)
    expected = {shape: PagedCase(shape, case.pool, case.batch, case.q, case.k, case.v).reference()
                for shape in (full, windowed)}
    backend = FlashInferAttentionBackend(case.pool)
    case.batch.attn_backend = backend
    for _ in range(2):
        backend.prepare(case.batch)
        for shape in (full, windowed):
            got = backend.forward(case.q, case.k, case.v, shape.spec(), case.batch)
            assert_close_to(got.view(case.q.shape), expected[shape], torch.bfloat16)


@needs_flashinfer
def test_backend_stores_new_tokens_before_attending():
    case = make_case(shape_of("gqa"), [(10, 5)], [20], DEVICE)
    case.run(FlashInferAttentionBackend)
    slots = case.batch.out_cache_loc
    assert torch.equal(case.pool.keys(0)[slots], case.k)
    assert torch.equal(case.pool.values(0)[slots], case.v)


def test_float32_pool_is_refused():
    pool = KVPool(4, 16, 1, 2, 64, torch.float32, "cpu")
    with pytest.raises(ValueError, match="float16/bfloat16"):
        FlashInferAttentionBackend(pool)


class StaticDecodeBatch:
    """A graph runner's fixed inputs for `size` decode rows, loaded with some rows of a case;
    the rows past them are padding (seq_len 1 in page 0, writing slot 0)."""

    def __init__(self, case: PagedCase, size: int) -> None:
        self.case, self.size = case, size
        q, k = case.q, case.k
        self.q = torch.zeros((size, *q.shape[1:]), dtype=q.dtype, device=DEVICE)
        self.k = torch.zeros((size, *k.shape[1:]), dtype=k.dtype, device=DEVICE)
        self.v = torch.zeros_like(self.k)
        width = case.batch.page_table.shape[1]
        zeros = torch.zeros(size, dtype=torch.int64, device=DEVICE)
        steps = torch.arange(size, dtype=torch.int32, device=DEVICE)
        self.batch = ForwardBatch(
            mode=ForwardMode.DECODE, input_ids=zeros, positions=zeros.clone(),
            out_cache_loc=zeros.clone(), seq_lens=torch.ones_like(steps),
            extend_lens=torch.ones_like(steps), extend_starts=steps,
            page_table=torch.zeros(size, width, dtype=torch.int32, device=DEVICE),
            logits_indices=steps.long(), seq_lens_cpu=[1] * size, extend_lens_cpu=[1] * size,
            num_extends=0, attn_backend=None, kv_pool=case.pool, graph_batch_size=size)

    def load(self, rows: list[int]) -> None:
        source, batch, n = self.case.batch, self.batch, len(rows)
        index = torch.tensor(rows, device=DEVICE)
        for static, values in ((self.q, self.case.q), (self.k, self.case.k),
                               (self.v, self.case.v), (batch.out_cache_loc, source.out_cache_loc),
                               (batch.seq_lens, source.seq_lens),
                               (batch.page_table, source.page_table)):
            static[n:] = 1 if static is batch.seq_lens else 0
            static[:n] = values[index]
        batch.seq_lens_cpu = [source.seq_lens_cpu[row] for row in rows] + [1] * (self.size - n)


def decode_rows(case: PagedCase, rows: list[int]) -> PagedCase:
    """The case cut down to some of its decode rows (one token each), on the same pool."""
    b, index = case.batch, torch.tensor(rows, device=DEVICE)
    steps = torch.arange(len(rows), dtype=torch.int32, device=DEVICE)
    batch = ForwardBatch(
        mode=ForwardMode.DECODE, input_ids=b.input_ids[index], positions=b.positions[index],
        out_cache_loc=b.out_cache_loc[index], seq_lens=b.seq_lens[index],
        extend_lens=b.extend_lens[index], extend_starts=steps, page_table=b.page_table[index],
        logits_indices=steps.long(), seq_lens_cpu=[b.seq_lens_cpu[row] for row in rows],
        extend_lens_cpu=[1] * len(rows), num_extends=0, attn_backend=None, kv_pool=case.pool)
    return PagedCase(case.shape, case.pool, batch, case.q[index], case.k[index], case.v[index])


def capture(backend: FlashInferAttentionBackend, static: StaticDecodeBatch,
            spec: AttentionSpec) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """Warms the pass up eagerly (which plans the layer kind), then captures it."""
    static.batch.attn_backend = backend
    backend.prepare(static.batch)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        backend.forward(static.q, static.k, static.v, spec, static.batch)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    backend.prepare(static.batch)
    with torch.cuda.graph(graph):
        out = backend.forward(static.q, static.k, static.v, spec, static.batch)
    return graph, out


GRAPH_SHAPES = {"gqa-page16": shape_of("gqa"), "mha-page1": shape_of("mha", page_size=1),
                "mha-window37": shape_of("mha", sliding_window=37)}


@needs_flashinfer
@pytest.mark.parametrize("shape_name", sorted(GRAPH_SHAPES))
def test_graph_replays_match_eager_as_batches_change(shape_name):
    """Two graph sizes share the fixed buffers; each replay is re-planned for new seq_lens and
    page tables, and padded rows must not disturb the real ones."""
    shape = GRAPH_SHAPES[shape_name]
    case = make_case(shape, [], [1, 300, 17, 1100, 16, 7, 40, 1], DEVICE)
    spec = shape.spec()
    backend = FlashInferAttentionBackend(case.pool)
    backend.init_cuda_graph_state(16)
    batches = {8: StaticDecodeBatch(case, 8), 4: StaticDecodeBatch(case, 4)}
    batches[8].load([0, 1, 2])
    batches[4].load([6])
    graphs = {size: capture(backend, static, spec) for size, static in batches.items()}
    for size, rows in ((8, [0, 1, 2]), (4, [6, 7]), (8, [3, 4, 5, 6, 7]), (4, [1, 0, 3, 2]),
                       (8, [0, 1, 2])):
        static = batches[size]
        static.load(rows)
        backend.prepare(static.batch)
        graph, out = graphs[size]
        graph.replay()
        got = out.view(static.q.shape)[:len(rows)]
        subset = decode_rows(case, rows)
        assert_close_to(got, subset.reference(), shape.dtype)
        eager = subset.run(FlashInferAttentionBackend)
        assert_close_to(got, eager.float(), shape.dtype)


def _share_prefixes(case: PagedCase, groups: PrefixGroups) -> None:
    """Makes each group's rows name their leader's first `shared_pages` pages, as rows holding
    one radix-cached prefix do."""
    table = case.batch.page_table
    for (begin, end), shared in zip(groups.bounds, groups.shared_pages, strict=True):
        table[begin + 1:end, :shared] = table[begin, :shared]


CASCADE_GROUPS = {
    # every row in a group
    "all": ([300, 310, 290, 305, 400, 401, 402, 403, 420],
            PrefixGroups([(0, 4), (4, 9)], [16, 24])),
    # rows outside groups before, between and after them; a shared prefix ending on the page
    # just before a row's last
    "some": ([50, 257, 260, 270, 258, 33, 400, 401, 402, 403, 404, 17],
             PrefixGroups([(1, 5), (6, 11)], [16, 20])),
}


@needs_flashinfer
@pytest.mark.parametrize("layout", CASCADE_GROUPS)
def test_decode_with_prefix_groups_matches_torch(layout):
    """Cascade: each group's shared pages read once as one multi-query level, merged with each
    row's own pages; the same attention as reading every row's pages. (The 8B shape's heads:
    the kernels a GPU run builds anyway.)"""
    decode_lens, groups = CASCADE_GROUPS[layout]
    case = make_case(shape_of("gqa", 128), [], decode_lens, DEVICE)
    _share_prefixes(case, groups)
    expected = case.reference()
    backend = FlashInferAttentionBackend(case.pool)
    backend.enable_prefix_groups()
    case.batch.attn_backend = backend
    for prefix_groups in (None, groups):  # the first pass meets the layer kind
        case.batch.prefix_groups = prefix_groups
        backend.prepare(case.batch)
        got = backend.forward(case.q, case.k, case.v, case.shape.spec(), case.batch)
    assert backend._meta.shared is not None  # the cascade ran
    assert_close_to(got.view(case.q.shape), expected, torch.bfloat16)


@needs_flashinfer
@pytest.mark.parametrize("heads", HEADS)
def test_kernel_builds_name_the_modules_the_plans_load(heads, monkeypatch):
    """The builds run at start-up (kernel_builds.py) are the very modules the first passes'
    plans ask for, so those passes compile nothing: every getter call a prefill and a decode
    plan make has arguments some build has."""
    import flashinfer.decode
    import flashinfer.prefill

    asked: set[tuple] = set()

    def recording(module, name: str) -> None:
        getter = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args: asked.add(args) or getter(*args))

    for module in (flashinfer.prefill, flashinfer.decode):
        recording(module, "get_batch_prefill_module")
    recording(flashinfer.decode, "get_batch_decode_module")
    num_heads, num_kv_heads = HEADS[heads]
    shapes = KernelShapes(torch.bfloat16, torch.bfloat16, 128, num_heads // num_kv_heads,
                          frozenset({False}))
    builds = FlashInferAttentionBackend.kernel_builds(shapes, torch.device(DEVICE))
    running = BackgroundKernelBuilds(builds)  # one compiler run, as the worker runs them
    assert running.wait() and running.failures == []
    assert_matches_reference(make_case(shape_of(heads, 128), [(0, 70)], [300], DEVICE))
    assert len(asked) == 2
    assert asked <= {module.load.args for module in builds}
    assert all(module.spec.args == module.load.args for module in builds)
