"""CUDA graphs for decode passes: captured once per padded batch size, replayed every step.

A batch-1 decode step of an 8B model launches ~400 kernels whose GPU work takes a few
milliseconds but whose launches alone take longer from Python. A graph replays them all with
one launch. Graphs fix every tensor address and launch shape, so the runner owns static input
buffers sized for the largest bucket; a batch of `n` decodes is copied into the first `n` rows
of the smallest bucket that holds it, and the rest of the bucket is padding that attends to
one token of page 0 and writes its K/V into slot 0 (page 0 is never granted to a request).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from radixmesh.services.worker.attention.base import AttentionBackend
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.torch_compile import CompiledDecode

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_batch_size: int) -> list[int]:
    """The captured sizes: 1, 2, 4, 8, then multiples of 8 up to 256, of 16 up to 512 and of 32
    beyond (and `max_batch_size` itself). Padding wastes at most 7 rows up to 256 and at most
    ~6% of a larger batch, whose step costs far more than the rows it pads."""
    sizes = [size for size in (1, 2, 4) if size < max_batch_size]
    for start, stop, stride in ((8, 256, 8), (256, 512, 16), (512, max_batch_size, 32)):
        sizes += list(range(start, min(stop, max_batch_size), stride))
    return sorted({*sizes, max_batch_size})


@dataclass(slots=True)
class StaticDecodeInputs:
    """The buffers every captured graph reads; row i is decode i of the batch (or padding)."""

    input_ids: torch.Tensor      # [max_bs] int64
    positions: torch.Tensor      # [max_bs] int64
    out_cache_loc: torch.Tensor  # [max_bs] int64
    seq_lens: torch.Tensor       # [max_bs] int32
    page_table: torch.Tensor     # [max_bs, max_pages_per_seq] int32
    ones: torch.Tensor           # [max_bs] int32: extend_lens of a decode batch
    row_ids: torch.Tensor        # [max_bs] int32 0..max_bs-1: extend_starts of a decode batch
    row_ids_long: torch.Tensor   # the same in int64: its logits_indices

    @classmethod
    def allocate(cls, max_bs: int, max_pages_per_seq: int, device: torch.device
                 ) -> StaticDecodeInputs:
        def zeros(*shape: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        def ones() -> torch.Tensor:
            return torch.ones(max_bs, dtype=torch.int32, device=device)

        return cls(input_ids=zeros(max_bs), positions=zeros(max_bs), out_cache_loc=zeros(max_bs),
                   seq_lens=ones(), page_table=zeros(max_bs, max_pages_per_seq, dtype=torch.int32),
                   ones=ones(),
                   row_ids=torch.arange(max_bs, dtype=torch.int32, device=device),
                   row_ids_long=torch.arange(max_bs, dtype=torch.int64, device=device))

    def load(self, batch: ForwardBatch, padded_size: int) -> None:
        """Copies `batch` (a decode batch on the device) into rows [0, n) and resets rows
        [n, padded_size) to padding: a larger earlier batch may have left real slots there."""
        n, width = batch.batch_size, batch.page_table.shape[1]
        self.input_ids[:n].copy_(batch.input_ids, non_blocking=True)
        self.positions[:n].copy_(batch.positions, non_blocking=True)
        self.out_cache_loc[:n].copy_(batch.out_cache_loc, non_blocking=True)
        self.seq_lens[:n].copy_(batch.seq_lens, non_blocking=True)
        self.page_table[:n, :width].copy_(batch.page_table, non_blocking=True)
        if padded_size > n:
            self.reset_padding(n, padded_size)

    def reset_padding(self, start: int, end: int) -> None:
        self.input_ids[start:end].zero_()
        self.positions[start:end].zero_()
        self.out_cache_loc[start:end].zero_()
        self.seq_lens[start:end].fill_(1)
        self.page_table[start:end, 0].zero_()


class CudaGraphRunner:
    """Captures `logits = compute_logits(model(batch))` for decode batches up to `max_batch_size`
    rows and replays it. Sampling stays outside: its parameters change from step to step.

    With `compiled` (--enable-torch-compile), sizes it covers capture the compiled forward
    instead of the eager one: compiled first (in the warm-up runs before each capture, outside
    any capture), then captured, so a replay runs inductor's kernels with no Python at all."""

    def __init__(self, model: nn.Module, backend: AttentionBackend, kv_pool: KVPool,
                 max_batch_size: int, max_pages_per_seq: int,
                 compiled: CompiledDecode | None = None) -> None:
        if not backend.supports_cuda_graph:
            raise ValueError(f"the {backend.name} attention backend does not support CUDA "
                             "graphs; pass --disable-cuda-graph")
        self.model = model
        self.compiled = compiled
        self.backend = backend
        self.kv_pool = kv_pool
        self.batch_sizes = graph_batch_sizes(max_batch_size)
        self.max_batch_size = self.batch_sizes[-1]
        self.inputs = StaticDecodeInputs.allocate(self.max_batch_size, max_pages_per_seq,
                                                  kv_pool.device)
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        # One output buffer for every graph: a graph's own output tensor would stay allocated
        # for its lifetime, and float32 logits over 67 sizes up to 1024 rows would hold ~12 GB.
        self._logits = torch.empty(self.max_batch_size, model.config.vocab_size,
                                   dtype=torch.float32, device=kv_pool.device)

    def can_run(self, batch: ForwardBatch) -> bool:
        return (batch.mode is ForwardMode.DECODE and batch.batch_size <= self.max_batch_size
                and batch.prefix_groups is None)

    @torch.inference_mode()
    def capture(self) -> None:
        start = time.perf_counter()
        self.backend.init_cuda_graph_state(self.max_batch_size)
        pool = torch.cuda.graph_pool_handle()
        stream = torch.cuda.Stream(self.kv_pool.device)
        # Largest first: smaller graphs then fit in the memory the largest one pooled.
        for size in reversed(self.batch_sizes):
            self.inputs.reset_padding(0, size)
            batch = self._static_batch(size, [1] * size)
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # compiles Triton kernels and settles allocator state
                    self.backend.prepare(batch)
                    self._run(batch)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            self.backend.prepare(batch)
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                self._run(batch)
            self._graphs[size] = graph
        torch.cuda.synchronize(self.kv_pool.device)
        logger.info("captured CUDA graphs for decode batch sizes %s in %.1f s",
                    self.batch_sizes, time.perf_counter() - start)

    def replay(self, batch: ForwardBatch) -> torch.Tensor:
        """Next-token logits [n, vocab] for a decode batch of n <= max_batch_size rows."""
        n = batch.batch_size
        size = next(size for size in self.batch_sizes if size >= n)
        self.inputs.load(batch, size)
        padded = self._static_batch(size, batch.seq_lens_cpu + [1] * (size - n))
        self.backend.prepare(padded)
        self._graphs[size].replay()
        return self._logits[:n]

    def _run(self, batch: ForwardBatch) -> torch.Tensor:
        compiled = self.compiled
        hidden = (compiled(batch) if compiled is not None and compiled.can_run(batch)
                  else self.model(batch))
        return self.model.compute_logits(hidden, out=self._logits[:batch.batch_size])

    def _static_batch(self, size: int, seq_lens_cpu: list[int]) -> ForwardBatch:
        s = self.inputs
        return ForwardBatch(
            mode=ForwardMode.DECODE, input_ids=s.input_ids[:size], positions=s.positions[:size],
            out_cache_loc=s.out_cache_loc[:size], seq_lens=s.seq_lens[:size],
            extend_lens=s.ones[:size], extend_starts=s.row_ids[:size],
            page_table=s.page_table[:size], logits_indices=s.row_ids_long[:size],
            seq_lens_cpu=seq_lens_cpu, extend_lens_cpu=[1] * size, num_extends=0,
            attn_backend=self.backend, kv_pool=self.kv_pool, graph_batch_size=size)

