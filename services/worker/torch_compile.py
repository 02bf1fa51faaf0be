"""`--enable-torch-compile`: the decode forward compiled by torch.compile (inductor).

What is compiled: the model's forward (embeddings to the final norm) for decode batches of at
most `--torch-compile-max-bs` rows; prefill, mixed and larger batches run the eager module.
The LM head and sampling stay outside (the head is one GEMM; sampling parameters change every
step).

Attention stays opaque. The backends do host work per pass (Python lists of lengths, kernel
plans) that Dynamo would either break the graph on or guard on, recompiling every step. So
while Dynamo traces, each layer's `PagedAttention` calls one registered custom op,
`radixmesh::paged_attention(q, k, v, layer_id)`, whose fake version only states the output
shape; the real one runs the batch's backend exactly as the eager model does, reading the pass
(ForwardBatch) from a context this module sets around every compiled call. One graph for the
whole forward, no graph breaks. Eager passes never see the op (`torch.compiler.is_compiling`).

Fused Triton kernels: the eager model's hand-written norm/RoPE/activation kernels are switched
off while the compiled forward runs, so that inductor traces their torch versions and fuses them
with the neighbouring ops itself (and Dynamo never has to trace a user kernel's launcher).

Shapes:
- On a GPU with CUDA graphs the compiled forward is what the graphs capture (cuda_graph.py),
  at a few fixed padded batch sizes, so it is compiled once per captured size with static
  shapes (the best kernels for each) and never recompiles at run time: replays run no Python.
  The mode is "max-autotune-no-cudagraphs", as SGLang's: inductor may benchmark GEMM
  templates against cuBLAS per size, but must not capture CUDA graphs of its own, since our
  runner captures the whole step (attention and all) into one graph per size.
- Without CUDA graphs (the CPU, or --disable-cuda-graph) every batch size reaches the compiled
  forward, so the batch dimension is dynamic: one graph for every size >= 2 and one for size 1
  (Dynamo always specializes sizes 0 and 1), both compiled at start-up, instead of one compile
  per new batch size. Default mode there: CPU autotuning costs minutes for little.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from radixmesh.kernels.fused_gate import set_fused_kernels
from radixmesh.services.worker.attention.base import AttentionSpec, PagedAttention
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)

GPU_MODE = "max-autotune-no-cudagraphs"
CPU_MODE = "default"


@dataclass
class _Pass:
    """The forward pass the compiled graph is running: what the attention op reads."""

    batch: ForwardBatch | None = None
    specs: dict[int, AttentionSpec] = field(default_factory=dict)


_current = _Pass()


@contextmanager
def _running(batch: ForwardBatch, specs: dict[int, AttentionSpec]) -> Iterator[None]:
    previous = (_current.batch, _current.specs)
    _current.batch, _current.specs = batch, specs
    fused = set_fused_kernels(False)
    try:
        yield
    finally:
        set_fused_kernels(fused)
        _current.batch, _current.specs = previous


@torch.library.custom_op("radixmesh::paged_attention", mutates_args=())
def paged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    layer_id: int) -> torch.Tensor:
    """Layer `layer_id`'s attention over the paged KV cache for the pass being run: stores k
    and v, returns [T, heads * head_dim]. The KV pool it writes is not an argument: only this
    layer's own call reads what it wrote, so no ordering can be lost."""
    batch = _current.batch
    if batch is None:
        raise RuntimeError("radixmesh::paged_attention ran outside a compiled forward pass")
    batch.wait_for_layer(layer_id)
    return batch.attn_backend.forward(q, k, v, _current.specs[layer_id], batch)


@paged_attention.register_fake
def _(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int) -> torch.Tensor:
    return q.new_empty((q.shape[0], q.shape[1] * q.shape[2]))


class OpPagedAttention(PagedAttention):
    """PagedAttention that, while Dynamo traces it, becomes one call of the custom op."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                batch: ForwardBatch) -> torch.Tensor:
        if not torch.compiler.is_compiling():
            return super().forward(q, k, v, batch)
        spec = self.spec
        return paged_attention(q.view(-1, spec.num_heads, spec.head_dim),
                               k.view(-1, spec.num_kv_heads, spec.head_dim),
                               v.view(-1, spec.num_kv_heads, spec.head_dim), spec.layer_id)


def route_attention_through_op(model: nn.Module) -> dict[int, AttentionSpec]:
    """Swaps every PagedAttention of `model` for an OpPagedAttention of the same spec (they
    hold no parameters, so weights are untouched); returns the specs by layer id."""
    specs: dict[int, AttentionSpec] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PagedAttention):
                if type(child) is PagedAttention:
                    setattr(parent, name, OpPagedAttention(child.spec))
                specs[child.spec.layer_id] = child.spec
    return specs


class CompiledDecode:
    """The model's forward compiled for decode batches of at most `max_batch_size` rows.

    `graph_sizes`: the batch sizes CUDA graphs capture, the only ones the graph runner calls
    this at: each is compiled with static shapes. None (no CUDA graphs): the batch dimension is
    dynamic. `compile_seconds` adds up the calls that compiled (the first at each size, or at
    size 1 and at sizes >= 2), for the start-up log.
    """

    def __init__(self, model: nn.Module, max_batch_size: int, device: torch.device,
                 graph_sizes: list[int] | None) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.static_shapes = graph_sizes is not None
        self.mode = GPU_MODE if device.type == "cuda" else CPU_MODE
        self.specs = route_attention_through_op(model)
        if graph_sizes is not None:  # one graph per compiled size; Dynamo's default allows 8
            compiled_sizes = sum(size <= max_batch_size for size in graph_sizes)
            limit = torch._dynamo.config.recompile_limit
            torch._dynamo.config.recompile_limit = max(limit, compiled_sizes + 8)
        self._forward = torch.compile(model, dynamic=not self.static_shapes,
                                      mode=None if self.mode == CPU_MODE else self.mode)
        self._compiled_keys: set[int] = set()
        self.compile_seconds = 0.0
        self.calls = 0  # passes run through the compiled forward (warm-up and capture too)

    def can_run(self, batch: ForwardBatch) -> bool:
        return batch.mode is ForwardMode.DECODE and batch.batch_size <= self.max_batch_size

    def __call__(self, batch: ForwardBatch) -> torch.Tensor:
        """Final hidden states [T, hidden] of a decode batch (`can_run`), as `model(batch)`."""
        self.calls += 1
        key = batch.batch_size if self.static_shapes else min(batch.batch_size, 2)
        started = time.perf_counter()
        with _running(batch, self.specs):
            hidden = self._forward(batch)
        if key not in self._compiled_keys:
            self._compiled_keys.add(key)
            self.compile_seconds += time.perf_counter() - started
        return hidden

    @property
    def compiled_sizes(self) -> list[int]:
        return sorted(self._compiled_keys)

    def log_compiled(self) -> None:
        sizes = (f"batch sizes {self.compiled_sizes}" if self.static_shapes
                 else f"batch sizes 1..{self.max_batch_size} (dynamic)")
        logger.info("torch.compile: decode forward compiled for %s in %.1f s (mode %s)",
                    sizes, self.compile_seconds, self.mode)
