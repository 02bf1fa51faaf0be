"""Executes step plans: owns the weights, the KV pool, the attention backend and the sampler.

It decides nothing: every request, chunk and page comes from the plan. What it keeps between
steps is the per-request state the plan refers to (tokens, page-table mirror, KV length).

On a GPU a step is launched, not waited for: the sampled tokens stay on the device (where the
next step's decodes read them) and travel to pinned host memory behind the step's kernels, so
step N + 1 can be prepared and queued while step N runs; `finish` waits for step N alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from radixmesh.services.worker.attention import make_attention_backend, pick_attention_backend
from radixmesh.services.worker.base import FinishedStep, LaunchedStep, ModelWorker
from radixmesh.services.worker.batch_builder import BatchEntry, StepRows, build_forward_batch
from radixmesh.services.worker.batch_invariant import (
    BatchInvariantMatmul,
    check_quantization,
    row_block_for,
)
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.cuda_graph import CudaGraphRunner, graph_batch_sizes
from radixmesh.services.worker.forward_batch import ForwardBatch
from radixmesh.services.worker.host_kv import HostKV
from radixmesh.services.worker.kernel_builds import BackgroundKernelBuilds, worker_kernel_builds
from radixmesh.services.worker.loader import load_kv_scales, load_model, resolve_dtype
from radixmesh.services.worker.memory import make_kv_pool, resolve_device
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.page_table import DevicePageTable
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel
from radixmesh.services.worker.prefix_groups import make_prefix_grouper
from radixmesh.services.worker.request_state import WorkerRequest
from radixmesh.services.worker.request_table import RequestTable
from radixmesh.services.worker.sampling import SamplingBatch, make_sampler, pick_sampling_backend
from radixmesh.services.worker.sampling.sampling_batch import SamplingBatches
from radixmesh.services.worker.startup_phases import StartupPhases
from radixmesh.services.worker.torch_compile import CompiledDecode
from radixmesh.shared.page_keys import weights_fingerprint
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo

logger = logging.getLogger(__name__)

DEFAULT_MAX_RUNNING = 256
# On a GPU a decode step's cost grows slowly with the batch, and a full batch keeps admissions
# (each a prefill step that stalls every decode) rare: sharegpt-like on an H100 ran ~6,600
# tok/s at 256 running requests, most steps being one-request prefills.
DEFAULT_MAX_RUNNING_GPU = 1024
# Graphs up to the largest batch the worker runs: on an H100, eager decode batches above 256
# ran 2-3x slower per step than graphed ones (host launch cost), and sharegpt-like spends its
# busiest seconds there.
DEFAULT_CUDA_GRAPH_MAX_BS = 1024


class RunnerStep(LaunchedStep):
    """A launched step: its tokens land in `host_tokens` when `done` (None on the CPU) fires."""

    def __init__(self, plan: StepPlan, rows: StepRows, host_tokens: torch.Tensor,
                 done: torch.cuda.Event | None, cuda_graph: bool) -> None:
        self.plan = plan
        self.rows = rows
        self.host_tokens = host_tokens
        self.done = done
        self.cuda_graph = cuda_graph

    def ready(self) -> bool:
        return self.done is None or self.done.query()


class ModelRunner(ModelWorker):
    name = "model"

    def __init__(self, config: WorkerConfig, model_path: Path,
                 parallel: TensorParallel = SINGLE, device: str | None = None) -> None:
        """`parallel`: the tensor-parallel rank this runner is (parallel/worker_group.py runs
        the group), on `device` (default: --device)."""
        self.config = config
        self.parallel = parallel
        self.device = resolve_device(device or config.device, config.base_gpu_id)
        startup = StartupPhases(self.device)
        deterministic = config.enable_deterministic_inference
        # Resolved before the weights load: a backend this machine lacks fails at once.
        sampling_backend = pick_sampling_backend(config.sampling_backend, self.device,
                                                 deterministic)
        self.model_config = ModelConfig.from_pretrained(model_path)
        if deterministic:
            check_quantization(bool(config.quantization or self.model_config.quantization),
                               self.device)
        self.context_len = config.context_length or self.model_config.context_len
        self.dtype = resolve_dtype(config.dtype, self.model_config)
        attention_backend = pick_attention_backend(config.attention_backend, self.device,
                                                   self.dtype, deterministic)
        kernel_builds = BackgroundKernelBuilds(worker_kernel_builds(
            self.model_config, self.dtype, config.kv_cache_dtype, attention_backend,
            sampling_backend, parallel, config.enable_cascade_attn, self.device))
        self.kv_scales = load_kv_scales(  # before the weights: bad scales fail fast
            self.model_config, model_path, config.kv_cache_dtype, config.load_format,
            config.quantization_param_path, parallel)
        self.model = load_model(self.model_config, model_path, config.load_format,
                                config.dtype, self.device, seed=config.random_seed,
                                quantization=config.quantization, parallel=parallel)
        self.model_config = self.model.config  # with the quantization it actually runs
        startup.lap("weights")
        self.weights_fingerprint = weights_fingerprint(
            model_path, dummy_seed=config.random_seed if config.load_format == "dummy" else None,
            quantized_at_load=config.quantization, kv_scales=self.kv_scales.digest)
        self.page_size = config.page_size or (16 if self.device.type == "cuda" else 1)
        self.kv_pool = make_kv_pool(config, self.model, self.model_config, self.dtype,
                                    self.device, self.page_size, parallel, self.kv_scales)
        startup.lap("KV pool")
        self.host_kv = HostKV(self.kv_pool, tp_rank=parallel.rank, tp_size=parallel.size)
        default_max_running = (DEFAULT_MAX_RUNNING_GPU if self.device.type == "cuda"
                               else DEFAULT_MAX_RUNNING)
        self.max_running = min(config.max_running_requests or default_max_running,
                               self.kv_pool.num_pages)
        # The backend (and its cascade) load what the builds made: one of them loading a module
        # a build is still making would build and register it a second time.
        if kernel_builds.wait():
            startup.lap("kernel builds (rest)")
        self.backend = make_attention_backend(attention_backend, self.kv_pool, deterministic)
        self.prefix_grouper = make_prefix_grouper(config.enable_cascade_attn, self.backend,
                                                  self.page_size)
        vocab_width = self.model_config.vocab_size
        self.sampler = make_sampler(sampling_backend, vocab_width, self.max_running,
                                    self.device, seed=config.random_seed)
        logger.info("sampling backend: %s", sampling_backend)
        self._sampling_batches = SamplingBatches(self.device)
        seeds = torch.Generator().manual_seed(config.random_seed)
        self.page_table = DevicePageTable(
            self.max_running, -(-self.context_len // self.page_size), self.device)
        self.table = RequestTable(
            self.max_running, lambda: int(torch.randint(0, 2**62, (), generator=seeds)),
            on_register=self._register_sampling,
            on_release=lambda req: self.sampler.release_request(req.slot),
            on_pages=lambda req, start, page_ids: self.page_table.write(req.slot, start,
                                                                        page_ids))
        # Each slot's latest sampled token, where the next decode of its request reads it.
        self.last_tokens = torch.zeros(self.max_running, dtype=torch.int64, device=self.device)
        self.compiled = self._make_compiled_decode()  # before the warm-up, which compiles
        startup.lap("set-up")
        self._warm_up(startup)  # kernels that compile on first use
        self.graph_runner = self._make_graph_runner()
        startup.lap("CUDA graphs")
        if self.compiled is not None:
            self.compiled.log_compiled()
        self.model_id = str(model_path)
        # Sees each step's logits (rids of the sampled rows, [S, vocab] float32) before
        # sampling: for tests and tools that compare logits bit for bit; None costs nothing.
        self.logits_observer: Callable[[list[str], torch.Tensor], None] | None = None
        self.available_memory_gb = (torch.cuda.mem_get_info(self.device)[0] / 2**30
                                    if self.device.type == "cuda" else 0.0)
        logger.info("worker %s", startup.summary())

    @torch.inference_mode()
    def _warm_up(self, startup: StartupPhases) -> None:
        """One prefill pass of a page of tokens into the padding page 0 and two random draws,
        at start-up: kernels that compile on first use (Triton's, the sampler's torch.compile;
        FlashInfer's were built beside the weights' load) then do so here, not on the first
        request (decode kernels while graphs are captured, or below for a compiled forward
        without graphs)."""
        logits = self._eager_logits(self._padding_batch(1, self.page_size, extend=True))
        startup.lap("warm-up: forward")
        # Random draws, with and without a seed of the request's own, compile what the sampler
        # compiles on first use: the fused race (torch.compile on CUDA), FlashInfer's JIT.
        drawn = [SamplingParams(temperature=1.0), SamplingParams(temperature=1.0, seed=0)]
        self.sampler.sample(logits.expand(2, -1),
                            SamplingBatch.build(drawn, [0, 0], [0, 0], [0, 0], self.device))
        startup.lap("warm-up: sampler")
        if self.compiled is not None and not self.compiled.static_shapes:
            # Decodes of 1 and 2 rows: the two graphs of a dynamic batch dimension.
            for rows in sorted({1, min(2, self.compiled.max_batch_size)}):
                self._eager_logits(self._padding_batch(rows, 1, extend=False))
            startup.lap("warm-up: compiled decode")

    def _padding_batch(self, rows: int, length: int, extend: bool) -> ForwardBatch:
        """`rows` requests (slots 0..rows-1) of `length` tokens in padding page 0, as extends
        or as decodes (of one token each), the pass's sole KV slots those of page 0."""
        reqs = [WorkerRequest(f"warm-up-{slot}", [0] * length, length, 0, SamplingParams(),
                              seed=0, slot=slot, page_table=[0]) for slot in range(rows)]
        for req in reqs:
            self.page_table.write(req.slot, 0, [0])
        step = (StepRows(extends=[BatchEntry(req, 0, length, True) for req in reqs]) if extend
                else StepRows(decodes=reqs, decode_starts=[0] * rows))
        return build_forward_batch(step, self.kv_pool, self.backend, self.last_tokens,
                                   self.page_table)

    def _graph_max_bs(self) -> int:
        return min(self.config.cuda_graph_max_bs or DEFAULT_CUDA_GRAPH_MAX_BS, self.max_running)

    def _make_compiled_decode(self) -> CompiledDecode | None:
        if not self.config.enable_torch_compile:
            return None
        graphs = (self.on_gpu and not self.config.disable_cuda_graph
                  and self.backend.supports_cuda_graph)  # as _make_graph_runner decides
        graph_sizes = graph_batch_sizes(self._graph_max_bs()) if graphs else None
        return CompiledDecode(self.model, min(self.config.torch_compile_max_bs, self.max_running),
                              self.device, graph_sizes)

    def _make_graph_runner(self) -> CudaGraphRunner | None:
        config = self.config
        if self.device.type != "cuda" or config.disable_cuda_graph:
            return None
        if not self.backend.supports_cuda_graph:
            logger.warning("CUDA graphs off: the %s attention backend does not support them",
                           self.backend.name)
            return None
        max_pages_per_seq = -(-self.context_len // self.page_size)
        runner = CudaGraphRunner(self.model, self.backend, self.kv_pool, self._graph_max_bs(),
                                 max_pages_per_seq, compiled=self.compiled)
        with self._forward_mode():  # the graphs hold whatever kernels the mode launched
            runner.capture()
        return runner

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def info(self) -> WorkerInfo:
        pool = self.kv_pool
        return WorkerInfo(
            model_id=self.model_id, num_pages=pool.num_pages, page_size=self.page_size,
            context_len=self.context_len, vocab_size=self.model_config.vocab_size,
            eos_token_ids=self.model_config.eos_token_ids, kv_dtype=pool.dtype_name,
            max_running_requests=self.max_running, available_memory_gb=self.available_memory_gb,
            cuda_graph=self.graph_runner is not None, worker=self.name,
            num_layers=pool.num_layers, num_kv_heads=pool.num_kv_heads, head_dim=pool.head_dim,
            weights_fingerprint=self.weights_fingerprint, tp_size=self.parallel.size)

    @property
    def num_requests(self) -> int:
        return len(self.table)

    def execute(self, plan: StepPlan) -> StepResult:
        return self.finish(self.launch(plan))

    @torch.inference_mode()
    def launch(self, plan: StepPlan) -> LaunchedStep:
        """Applies the plan in shared/step.py's order; the copies are checked before any
        state changes or any byte moves."""
        if plan.host_pool is not None:
            self.host_kv.attach(plan.host_pool)
        self.host_kv.check(plan)
        rows = self.table.apply(plan)
        # Backups read their pages first: this very plan may have granted them again.
        self.host_kv.backup(plan.step_id, plan.backups)
        loads = self.host_kv.load(plan.loads)
        if not rows:
            loads.wait_all()  # a later step's pass must not read pages before they land
            return FinishedStep(StepResult(plan.step_id, [], []))
        batch = build_forward_batch(rows, self.kv_pool, self.backend, self.last_tokens,
                                    self.page_table, self.prefix_grouper)
        graph = self.graph_runner is not None and self.graph_runner.can_run(batch)
        if graph:
            loads.wait_all()  # a replayed graph has no per-layer hook: every layer lands first
            logits = self.graph_runner.replay(batch)
        else:
            batch.wait_for_layer = loads.wait_for_layer
            logits = self._eager_logits(batch)
        sampled = rows.sampled
        if self.logits_observer is not None:
            self.logits_observer([req.rid for req in sampled], logits)
        sampling = self._sampling_batch(sampled)
        next_ids = self.sampler.sample(logits, sampling)
        self.last_tokens.index_copy_(0, sampling.slots, next_ids)
        if self.device.type != "cuda":
            return RunnerStep(plan, rows, next_ids, None, graph)
        host_tokens = torch.empty(next_ids.shape, dtype=next_ids.dtype, pin_memory=True)
        host_tokens.copy_(next_ids, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return RunnerStep(plan, rows, host_tokens, done, graph)

    def _eager_logits(self, batch: ForwardBatch) -> torch.Tensor:
        self.backend.prepare(batch)
        compiled = self.compiled
        # With CUDA graphs the compiled forward runs only inside them, at its captured sizes.
        if compiled is not None and not compiled.static_shapes and compiled.can_run(batch):
            return self.model.compute_logits(compiled(batch)[batch.logits_indices])
        with self._forward_mode():
            return self.model.compute_logits(self.model(batch)[batch.logits_indices])

    def _forward_mode(self) -> AbstractContextManager:
        """Batch-invariant GEMMs under --enable-deterministic-inference (batch_invariant.py)."""
        if not self.config.enable_deterministic_inference:
            return nullcontext()
        return BatchInvariantMatmul(row_block_for(self.device))

    def finish(self, step: LaunchedStep) -> StepResult:
        if isinstance(step, FinishedStep):
            result = step.result
        else:
            assert isinstance(step, RunnerStep)
            if step.done is not None:
                step.done.synchronize()
            result = self.table.commit(step.plan, step.rows, step.host_tokens.tolist(),
                                       cuda_graph=step.cuda_graph)
        # Read now, not at launch, and capped at the step's own id (a later step may have been
        # launched already): results then report it in step order, never going back.
        result.backed_up_through = min(self.host_kv.backed_up_through, result.step_id)
        return result

    def close(self) -> None:
        self.host_kv.close()

    def _sampling_batch(self, reqs: list[WorkerRequest]) -> SamplingBatch:
        return self._sampling_batches.build(reqs)

    def _register_sampling(self, req: WorkerRequest) -> None:
        prompt, output = req.token_ids[:req.num_prompt_tokens], req.token_ids[req.num_prompt_tokens:]
        self.sampler.add_request(req.slot, req.sampling, prompt, output)
