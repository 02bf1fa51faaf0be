"""The attention backend interface and the per-layer attention module the models use."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from radixmesh.services.worker.forward_batch import ForwardBatch
from radixmesh.services.worker.jit_module import JitModule
from radixmesh.services.worker.kv_pool import KVPool


@dataclass(frozen=True, slots=True)
class AttentionSpec:
    """The shape of one attention layer, fixed at model construction."""

    layer_id: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float
    sliding_window: int | None = None  # attend to the last `sliding_window` positions only


@dataclass(frozen=True, slots=True)
class KernelShapes:
    """What a backend's JIT-compiled kernels are specialised on, known from the model's config
    before its weights load (see `AttentionBackend.kernel_builds`)."""

    compute_dtype: torch.dtype
    kv_dtype: torch.dtype
    head_dim: int
    query_group: int                # query heads per KV head
    windowed: frozenset[bool]       # whether some layers slide (True), some not (False)
    prefix_groups: bool = False     # --enable-cascade-attn


class AttentionBackend(ABC):
    """Attention over the paged KV cache.

    Invariants every backend keeps:
    - `forward` first stores the batch's new K and V at `batch.out_cache_loc` (through the
      pool, which quantizes for an FP8 cache), then attends, reading the cache at the pool's
      scales (`kv_pool.k_scales`, `v_scales`) and computing in the query's dtype.
    - The query at position p of a sequence attends to exactly that sequence's KV positions
      [0, p] (causal), or (p - sliding_window, p] for a sliding-window layer; nothing else, in
      particular never to padding page 0 nor to another sequence's pages.
    - Output is [T, num_heads * head_dim] in the query dtype, tokens in batch order.
    - `prepare` is called once per forward pass before any layer; per-layer calls reuse what it
      built, so per-step host work is paid once, not once per layer.
    - CUDA graphs (`supports_cuda_graph`): `init_cuda_graph_state(max_batch_size)` runs once
      before any capture. A batch with `graph_batch_size` set is a decode batch padded to that
      size whose tensors are the graph runner's static buffers (padding rows: seq_len 1 in page
      0, writing slot 0). For it, `prepare` runs once before that size is captured and again
      before every replay: it may do host work and copy into persistent buffers, but whatever
      the layers read must sit at the same addresses on every call for that size, and nothing
      may wait on the GPU. Layers must launch the same kernels with the same launch shapes for
      every replay of one size.
    - Prefix groups (`supports_prefix_groups`, after `enable_prefix_groups`): when
      `batch.prefix_groups` is set (an eager decode batch), the rows of a group share their
      first `shared_pages` pages, and the backend may read those once per group and merge the
      partial results; the output is the same attention summed in another order. A backend
      without the support ignores it.
    Backends are chosen by name from the registry in `attention/__init__.py`.
    """

    name: str = ""
    supports_cuda_graph: bool = False
    # Whether the backend can honour `deterministic`: each query's output bitwise independent
    # of the batch around it, of its chunking and of where its prefix's KV came from.
    supports_deterministic: bool = False
    supports_prefix_groups: bool = False

    def __init__(self, kv_pool: KVPool, deterministic: bool = False) -> None:
        if deterministic and not self.supports_deterministic:
            raise ValueError(f"the {self.name} attention backend is not batch-invariant: with "
                             "--enable-deterministic-inference use --attention-backend triton "
                             "(GPU) or torch")
        self.kv_pool = kv_pool
        self.deterministic = deterministic

    @classmethod
    def kernel_builds(cls, shapes: KernelShapes,
                      device: torch.device) -> list[JitModule]:
        """The JIT modules this backend compiles on first use, for `shapes` on `device`, safe
        to build and load on another thread while the worker loads its weights (see
        kernel_builds.py); none by default. A module that turns out not to be needed only
        costs compiler time."""
        return []

    def prepare(self, batch: ForwardBatch) -> None:  # noqa: B027 (optional hook)
        """Builds per-pass metadata (index tensors, kernel plans). Optional."""

    def enable_prefix_groups(self) -> None:
        """Readies reading shared prefixes once (`supports_prefix_groups`): kernels built
        here, at start-up, not in the first grouped step."""
        raise NotImplementedError(f"the {self.name} backend does not read prefix groups")

    def init_cuda_graph_state(self, max_batch_size: int) -> None:
        """Allocates the persistent buffers that decode graphs up to `max_batch_size` read."""
        raise NotImplementedError(f"the {self.name} backend does not support CUDA graphs")

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, spec: AttentionSpec,
                batch: ForwardBatch) -> torch.Tensor:
        """q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim]."""


class PagedAttention(nn.Module):
    """What a model's attention block calls instead of computing attention itself.

    It has no parameters, so models keep HF's module names and checkpoints load by name.
    """

    def __init__(self, spec: AttentionSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        spec = self.spec
        q = q.view(-1, spec.num_heads, spec.head_dim)
        k = k.view(-1, spec.num_kv_heads, spec.head_dim)
        v = v.view(-1, spec.num_kv_heads, spec.head_dim)
        batch.wait_for_layer(spec.layer_id)
        return batch.attn_backend.forward(q, k, v, spec, batch)
