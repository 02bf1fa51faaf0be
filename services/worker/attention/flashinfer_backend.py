"""The FlashInfer attention backend: FlashInfer's paged prefill and decode kernels over the KV pool.

FlashInfer reads the pool's per-layer K and V buffers in place, viewed as
[num_pages + 1, page_size, kv_heads, head_dim] (its "NHD" layout); page 0 is padding and is
never listed in a sequence's pages. An FP8 cache is read natively: plans name the query dtype
(the activations') and the KV dtype apart, and each run passes the layer's `k_scale` and
`v_scale` (FlashInfer folds the first into the softmax scale and applies the second to the
output). Prefill then uses FlashInfer's fa2 kernels, which take FP8 KV beside a bf16/fp16 query.

FlashInfer splits attention into `plan` (host work: partitioning the work, copying index arrays
to the device) and `run` (kernel launches only). A plan is bound to a layer *kind* (head count,
window, softmax scale; see `LayerKind`), so `prepare` plans every kind met so far once per pass
and the layers only run. A kind first met in `forward` (the model's first pass) is planned
there, once. That cannot happen inside a CUDA-graph capture: a graph runner must run each
size's pass eagerly once before capturing it, as its warm-up does anyway.

CUDA graphs: a graph batch of size B uses, per kind, a decode wrapper dedicated to B whose index
arrays live in fixed buffers. The buffers are shared by all sizes (one size is replayed at a
time and every replay is re-planned first), and so is each kind's integer plan workspace.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from radixmesh.kernels.page_indices import flatten_page_table
from radixmesh.services.worker.attention import flashinfer_cascade as cascade
from radixmesh.services.worker.attention.base import AttentionBackend, AttentionSpec, KernelShapes
from radixmesh.services.worker.attention.flashinfer_builds import (
    TENSOR_CORE_MIN_GROUP,
    flashinfer_kernel_builds,
    prefill_backend,
)
from radixmesh.services.worker.attention.flashinfer_graph import GraphBuffers
from radixmesh.services.worker.forward_batch import ForwardBatch
from radixmesh.services.worker.jit_module import JitModule
from radixmesh.services.worker.kv_pool import KVPool

# FlashInfer's scratch for split-KV partial results; one buffer serves every wrapper because
# runs are stream-ordered and nothing in it outlives one run. A graph decode plan reserves
# partial results for a fixed split count over its whole batch: 1024 rows of the 8B shape
# (32 heads of 128) asked for 335 MB of them on an H100, so 128 MB holds only smaller graphs.
FLOAT_WORKSPACE_BYTES = 512 * 1024 * 1024
# FlashInfer's size for a wrapper's integer workspace, which holds a plan until the next one.
INT_WORKSPACE_BYTES = 8 * 1024 * 1024
# FlashInfer 0.5.3's fa2 prefill over an FP8 cache: the narrowest head it has tiles for (seen on
# an H100: head_dim 16 is refused at run time; the models it serves have 64, 128 or 256).
FP8_MIN_HEAD_DIM = 64


@dataclass(frozen=True, slots=True)
class LayerKind:
    """What a FlashInfer plan is bound to; all layers of one kind share one plan per pass."""

    num_heads: int
    window_left: int  # FlashInfer's: the query at p sees keys >= p - window_left; -1: no window
    sm_scale: float

    @classmethod
    def of(cls, spec: AttentionSpec) -> LayerKind:
        # Our window W lets the query at p see keys (p - W, p], i.e. from p - (W - 1) on.
        window_left = -1 if spec.sliding_window is None else spec.sliding_window - 1
        return cls(spec.num_heads, window_left, spec.scaling)


@dataclass(frozen=True, slots=True)
class PagedRows:
    """Some sequences' KV pages in the CSR form FlashInfer's `plan` takes."""

    kv_indptr: torch.Tensor         # [n + 1] int32 on the host
    kv_indices: torch.Tensor        # [kv_indptr[-1]] int32 on the device
    kv_last_page_len: torch.Tensor  # [n] int32 on the host, each in [1, page_size]

    @classmethod
    def build(cls, seq_lens: list[int], pages: list[int], page_size: int,
              indices: torch.Tensor) -> PagedRows:
        """`pages[i]` is ceil(seq_lens[i] / page_size), already counted by the caller."""
        return cls(torch.tensor(list(itertools.accumulate(pages, initial=0)), dtype=torch.int32),
                   indices,
                   torch.tensor([(n - 1) % page_size + 1 for n in seq_lens], dtype=torch.int32))


@dataclass(slots=True)
class PassMetadata:
    """One pass's plan inputs; extends are the first rows and own the first query tokens."""

    num_extend_tokens: int
    qo_indptr: torch.Tensor | None  # [num_extends + 1] int32 on the host
    extends: PagedRows | None
    decodes: PagedRows | None
    graph_batch_size: int | None
    shared: cascade.SharedLevel | None = None  # cascade: decodes then skip their shared pages
    # (prefill, decode, shared level), each None where the pass has none
    plans: dict[LayerKind, tuple[Any, Any, Any]] = field(default_factory=dict)


class FlashInferAttentionBackend(AttentionBackend):
    name = "flashinfer"
    supports_cuda_graph = True
    supports_prefix_groups = True
    supported_dtypes = (torch.float16, torch.bfloat16)

    def __init__(self, kv_pool: KVPool, deterministic: bool = False) -> None:
        super().__init__(kv_pool, deterministic)
        if kv_pool.compute_dtype not in self.supported_dtypes:
            raise ValueError(f"flashinfer supports float16/bfloat16, not "
                             f"{kv_pool.compute_dtype}; use --attention-backend triton")
        if kv_pool.is_fp8 and kv_pool.head_dim < FP8_MIN_HEAD_DIM:
            # Its fa2 prefill (the one that takes an FP8 cache) has no tile configuration
            # for narrower heads: it fails at the first prefill ("Invalid configuration").
            raise ValueError(f"flashinfer reads an FP8 KV cache only with head_dim >= "
                             f"{FP8_MIN_HEAD_DIM}, and this model's is {kv_pool.head_dim}; use "
                             f"--attention-backend triton or --kv-cache-dtype auto")
        import flashinfer  # here, not at module level: registering the backend stays cheap

        self._flashinfer = flashinfer
        device = kv_pool.keys(0).device  # with its index, which FlashInfer compares against
        self._device = device
        self._workspace = torch.zeros(FLOAT_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        shape = (kv_pool.num_pages + 1, kv_pool.page_size, kv_pool.num_kv_heads, kv_pool.head_dim)
        self._caches = [(kv_pool.keys(layer).view(shape), kv_pool.values(layer).view(shape))
                        for layer in range(kv_pool.num_layers)]
        self._kinds: dict[LayerKind, None] = {}  # every kind met so far, in order
        self._prefill_wrappers: dict[LayerKind, Any] = {}
        self._decode_wrappers: dict[LayerKind, Any] = {}
        self._decode_int_workspaces: dict[LayerKind, torch.Tensor] = {}
        self._graph: GraphBuffers | None = None
        self._meta: PassMetadata | None = None
        self._cascade = cascade.CascadeLevels(flashinfer, self._workspace, kv_pool)
        # FlashInfer's `plan` stages its index arrays in one pinned host buffer per wrapper and
        # copies them to the device without waiting. The worker plans step N + 1 while step N
        # may still be queued, so before re-filling that buffer we wait for the previous pass's
        # copies, queued at its start: by the time the next plan comes they are done, and the
        # wait costs nothing but a check.
        self._plans_copied: torch.cuda.Event | None = None

    @classmethod
    def kernel_builds(cls, shapes: KernelShapes, device: torch.device) -> list[JitModule]:
        return flashinfer_kernel_builds(shapes, device)

    def enable_prefix_groups(self) -> None:
        self._cascade.enable()

    def init_cuda_graph_state(self, max_batch_size: int) -> None:
        self._graph = GraphBuffers.allocate(max_batch_size, self._device)

    def prepare(self, batch: ForwardBatch) -> None:
        page_size = self.kv_pool.page_size
        n = batch.num_extends
        pages = [-(-seq_len // page_size) for seq_len in batch.seq_lens_cpu]
        if batch.graph_batch_size is not None:
            if self._graph is None:
                raise RuntimeError("init_cuda_graph_state must run before a graph batch is "
                                   "prepared")
            self._graph.check(batch, sum(pages), self.kv_pool.num_pages)
        shared = skip = None
        if (batch.prefix_groups is not None and self._cascade.enabled
                and cascade.cascade_applies(batch, self._kinds)):
            shared, skip, pages = cascade.split_levels(batch, batch.prefix_groups, pages,
                                                       page_size)
        flat = flatten_page_table(batch.page_table, batch.seq_lens, page_size, sum(pages), skip)
        extend_pages = sum(pages[:n])
        extend_lens = batch.extend_lens_cpu[:n]
        self._meta = PassMetadata(
            num_extend_tokens=sum(extend_lens),
            qo_indptr=(torch.tensor(list(itertools.accumulate(extend_lens, initial=0)),
                                    dtype=torch.int32) if n else None),
            extends=(PagedRows.build(batch.seq_lens_cpu[:n], pages[:n], page_size,
                                     flat[:extend_pages]) if n else None),
            decodes=(PagedRows.build(batch.seq_lens_cpu[n:], pages[n:], page_size,
                                     flat[extend_pages:]) if n < batch.batch_size else None),
            graph_batch_size=batch.graph_batch_size, shared=shared)
        if self._plans_copied is not None:
            self._plans_copied.synchronize()
        for kind in self._kinds:
            self._plan(kind)
        self._plans_copied = torch.cuda.Event()
        self._plans_copied.record()

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                batch: ForwardBatch) -> torch.Tensor:
        meta = self._meta
        assert meta is not None, "prepare(batch) must run before the first layer"
        pool, layer = self.kv_pool, spec.layer_id
        pool.store(layer, batch.out_cache_loc, k, v)
        kind = LayerKind.of(spec)
        prefill, decode, shared = meta.plans.get(kind) or self._plan(kind)
        query = q if q.dtype == pool.compute_dtype else q.to(pool.compute_dtype)
        if query.stride(-1) != 1:
            query = query.contiguous()
        out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
        cache = self._caches[spec.layer_id]
        first_decode = meta.num_extend_tokens
        scales = (dict(k_scale=pool.k_scales[layer], v_scale=pool.v_scales[layer])
                  if pool.is_fp8 else {})
        if prefill is not None:
            prefill.run(query[:first_decode], cache, out=out[:first_decode], **scales)
        if shared is not None:  # a decode batch: first_decode is 0
            self._cascade.run(decode, shared, meta.shared, query, cache, out, scales)
        elif decode is not None:
            decode.run(query[first_decode:], cache, out=out[first_decode:], **scales)
        return out.view(q.shape[0], -1).to(q.dtype)

    def _plan(self, kind: LayerKind) -> tuple[Any, Any, Any]:
        """Plans this pass's wrappers for `kind` and remembers the kind for later passes."""
        meta = self._meta
        assert meta is not None
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError("flashinfer: a layer kind met for the first time during CUDA-graph "
                               "capture; run the pass once eagerly before capturing it")
        pool = self.kv_pool
        dtypes = dict(q_data_type=pool.compute_dtype, kv_data_type=pool.dtype)
        prefill = decode = shared = None
        if meta.extends is not None:
            prefill = self._prefill_wrapper(kind)
            rows = meta.extends
            prefill.plan(meta.qo_indptr, rows.kv_indptr, rows.kv_indices, rows.kv_last_page_len,
                         kind.num_heads, pool.num_kv_heads, pool.head_dim, pool.page_size,
                         causal=True, sm_scale=kind.sm_scale, window_left=kind.window_left,
                         **dtypes)
        if meta.decodes is not None:
            decode = self._decode_wrapper(kind, meta.graph_batch_size)
            rows = meta.decodes
            decode.plan(rows.kv_indptr, rows.kv_indices, rows.kv_last_page_len, kind.num_heads,
                        pool.num_kv_heads, pool.head_dim, pool.page_size,
                        window_left=kind.window_left, sm_scale=kind.sm_scale, **dtypes)
        if meta.shared is not None:
            shared = self._cascade.plan(kind, meta.shared)
        self._kinds[kind] = None
        meta.plans[kind] = (prefill, decode, shared)
        return prefill, decode, shared

    def _prefill_wrapper(self, kind: LayerKind) -> Any:
        wrapper = self._prefill_wrappers.get(kind)
        if wrapper is None:
            wrapper = self._flashinfer.BatchPrefillWithPagedKVCacheWrapper(
                self._workspace, "NHD",
                backend=prefill_backend(kind.window_left >= 0, self.kv_pool.is_fp8))
            self._prefill_wrappers[kind] = wrapper
        return wrapper

    def _decode_wrapper(self, kind: LayerKind, graph_batch_size: int | None) -> Any:
        """The eager decode wrapper of `kind`, or the one dedicated to a graph batch size."""
        graph = self._graph
        assert graph_batch_size is None or graph is not None
        wrappers = self._decode_wrappers if graph_batch_size is None else graph.wrappers
        key = kind if graph_batch_size is None else (kind, graph_batch_size)
        wrapper = wrappers.get(key)
        if wrapper is not None:
            return wrapper
        tensor_cores = kind.num_heads // self.kv_pool.num_kv_heads >= TENSOR_CORE_MIN_GROUP
        if graph_batch_size is None:
            wrapper = self._flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self._workspace, "NHD", use_tensor_cores=tensor_cores)
        else:
            wrapper = self._flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self._workspace, "NHD", use_cuda_graph=True, use_tensor_cores=tensor_cores,
                paged_kv_indptr_buffer=graph.kv_indptr[:graph_batch_size + 1],
                paged_kv_indices_buffer=graph.kv_indices,
                paged_kv_last_page_len_buffer=graph.kv_last_page_len[:graph_batch_size])
        # A kind's decode plans are never live together (a pass is eager or one graph size, and
        # is re-planned before it runs), so they share one integer workspace.
        int_workspace = self._decode_int_workspaces.get(kind)
        if int_workspace is None:
            int_workspace = torch.empty(INT_WORKSPACE_BYTES, dtype=torch.uint8,
                                        device=self._device)
            self._decode_int_workspaces[kind] = int_workspace
        wrapper.reset_workspace_buffer(self._workspace, int_workspace)
        wrappers[key] = wrapper
        return wrapper
