"""The model-worker service's configuration: every field is a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from radixmesh.services.worker.quantization.config import QUANTIZATION_CHOICES
from radixmesh.shared.hub import HubFlags
from radixmesh.shared.peers import DEFAULT_PORTS
from radixmesh.shared.tls_flags import InternalTLSFlags
from radixmesh.shared.tracing import TracingFlags

# The null worker holds no KV tensors, so its pool is only metadata: make it roomy enough for
# the null-worker workload (1000 streams of a few hundred tokens) unless told otherwise.
NULL_DEFAULT_TOTAL_TOKENS = 1 << 20
NULL_DEFAULT_MAX_RUNNING = 1024
# The names sampling/registry.py registers (a test keeps the two in step); spelled here so
# that reading the flags never imports torch.
SAMPLING_BACKEND_CHOICES = ("pytorch", "flashinfer")


@dataclass(frozen=True)
class WorkerConfig(TracingFlags, HubFlags, InternalTLSFlags):
    # Where the service listens: `radixmesh up` sets host and port itself, and the in-process
    # engine, which has no sockets, leaves all three at their defaults.
    SERVICE_FIELDS: ClassVar[frozenset[str]] = frozenset({"host", "port", "metrics_port"})

    worker: str = field(default="model", metadata={
        "help": "model: run the model; null: no model math, fixed tokens (measures the mesh)",
        "choices": ("model", "null")})
    model_path: str | None = field(default=None, metadata={
        "help": "HF-format model directory, or a Hugging Face hub id (ORG/NAME) resolved "
                "through the hub cache (default: a tiny random Llama made on first use)"})
    load_format: str = field(default="auto", metadata={
        "help": "auto: read safetensors; dummy: random weights from config.json alone",
        "choices": ("auto", "dummy")})
    dtype: str = field(default="auto", metadata={
        "help": "weights and activations dtype", "choices": ("auto", "float32", "bfloat16", "float16")})
    quantization: str | None = field(default=None, metadata={
        "help": "fp8: weights in FP8 (e4m3) with per-channel scales, quantized at load; FP8 "
                "GEMMs on GPUs of compute capability 8.9+, dequantized GEMMs elsewhere. A "
                "checkpoint quantized ahead of time loads as it is without this flag",
        "choices": QUANTIZATION_CHOICES})
    kv_cache_dtype: str = field(default="auto", metadata={
        "help": "KV cache storage: auto (the model's dtype), or FP8 with per-tensor scales "
                "(fp8_e4m3, fp8_e5m2): half the bytes per token in every tier, so the same "
                "memory holds ~2x the tokens",
        "choices": ("auto", "fp8_e4m3", "fp8_e5m2")})
    quantization_param_path: str | None = field(default=None, metadata={
        "help": "JSON file of per-layer FP8 KV-cache scales (SGLang's format), used with "
                "--kv-cache-dtype fp8_* in place of the checkpoint's k_scale/v_scale tensors"})
    enable_deterministic_inference: bool = field(default=False, metadata={
        "help": "batch-invariant GEMMs and attention: a request gets bitwise-equal logits "
                "whatever it is batched with, whether its prefix was cached and however its "
                "prefill was chunked (slower; torch and triton attention backends only)"})
    enable_torch_compile: bool = field(default=False, metadata={
        "help": "compile the decode forward with torch.compile (inductor) for decode batches "
                "of at most --torch-compile-max-bs; on a GPU the compiled forward is what the "
                "CUDA graphs capture (so it covers at most --cuda-graph-max-bs), larger batches "
                "and prefill run eagerly. Costs start-up time (logged)"})
    torch_compile_max_bs: int = field(default=32, metadata={
        "help": "largest decode batch that runs the torch.compile'd forward"})
    sampling_backend: str | None = field(default=None, metadata={
        "help": "token sampling kernels: pytorch (counter-seeded, batch-invariant) or "
                "flashinfer (FlashInfer's fused top-k/top-p/min-p kernels; requests that "
                "bring a seed still draw through pytorch). Default: flashinfer on a CUDA "
                "device when it is installed, else pytorch (always pytorch with "
                "--enable-deterministic-inference)",
        "choices": SAMPLING_BACKEND_CHOICES})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    attention_backend: str = field(default="auto", metadata={
        "help": "attention kernels; auto picks the fastest available"})
    page_size: int | None = field(default=None, metadata={
        "help": "tokens per KV page (default: 1 on CPU, 16 on GPU)"})
    max_total_tokens: int | None = field(default=None, metadata={
        "help": "KV pool size in tokens (default: from --mem-fraction-static on a GPU)"})
    mem_fraction_static: float = field(default=0.85, metadata={
        "help": "share of GPU memory for weights plus the KV pool"})
    max_running_requests: int | None = field(default=None, metadata={
        "help": "request slots on the worker (default: from the pool size)"})
    context_length: int | None = field(default=None, metadata={
        "help": "override the model's max_position_embeddings"})
    cuda_graph_max_bs: int | None = field(default=None, metadata={
        "help": "largest decode batch replayed from a CUDA graph (default: min(1024, "
                "--max-running-requests)); larger batches run eagerly"})
    disable_cuda_graph: bool = field(default=False, metadata={
        "help": "run every decode step eagerly (CUDA graphs are used on a GPU by default)"})
    enable_cascade_attn: bool = field(default=False, metadata={
        "help": "cascade attention: a prefix that several decodes share is read once per "
                "group (flashinfer backend; eager decode steps where groups of 4+ rows save "
                "a quarter of the reads)"})
    tp_size: int = field(default=1, metadata={
        "help": "tensor-parallel ranks: the model's heads, MLP features and vocabulary split "
                "over this many processes, one per device (cuda:0..N-1 on a GPU, gloo on "
                "CPU), driven by this worker", "aliases": ("--tp",)})
    tp_timeout: float = field(default=120.0, metadata={
        "help": "seconds a tensor-parallel collective waits for the other ranks before the "
                "group fails (and is restarted whole)"})
    base_gpu_id: int = field(default=0, metadata={
        "help": "the first GPU this worker uses (its ranks take the next --tp-size ones); "
                "`up --dp-size` gives each replica its own"})
    random_seed: int = field(default=0, metadata={
        "help": "seeds dummy weights, the seeds of requests that bring none and the "
                "flashinfer sampler's generator"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_PORTS["worker"], metadata={
        "help": "gRPC port of the Worker service (0: any free port)"})
    metrics_port: int = field(default=0, metadata={
        "help": "serve Prometheus /metrics (worker idle and forward time) on this port; 0: off"})

    def __post_init__(self) -> None:
        self.check_tls()  # TLS files named by the flags: usable, or a clear error
        if self.page_size is not None and self.page_size < 1:
            raise ValueError("--page-size must be >= 1")
        if self.max_total_tokens is not None and self.max_total_tokens < 1:
            raise ValueError("--max-total-tokens must be >= 1")
        if self.cuda_graph_max_bs is not None and self.cuda_graph_max_bs < 1:
            raise ValueError("--cuda-graph-max-bs must be >= 1")
        if self.torch_compile_max_bs < 1:
            raise ValueError("--torch-compile-max-bs must be >= 1")
        self._check_deterministic_combinations()
        if self.tp_size < 1:
            raise ValueError("--tp-size must be >= 1")
        if self.kv_cache_dtype not in ("auto", "fp8_e4m3", "fp8_e5m2"):
            raise ValueError("--kv-cache-dtype must be auto, fp8_e4m3 or fp8_e5m2, not "
                             f"{self.kv_cache_dtype!r}")
        if self.tp_size > 1 and self.worker != "model":
            raise ValueError(f"--tp-size splits a model; the {self.worker} worker has none")
        if self.base_gpu_id < 0:
            raise ValueError("--base-gpu-id must be >= 0")
        if self.tp_timeout <= 0:
            raise ValueError("--tp-timeout must be > 0")
        if not 0 < self.mem_fraction_static < 1:
            raise ValueError("--mem-fraction-static must be in (0, 1)")
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 65535]")

    def _check_deterministic_combinations(self) -> None:
        """Flags whose kernels would undo --enable-deterministic-inference are refused."""
        if not self.enable_deterministic_inference:
            return
        if self.enable_torch_compile:
            # The batch-invariant GEMMs are a dispatch mode over eager ops, which a compiled
            # graph never calls; inductor also picks its reductions (RMSNorm's sums) per shape.
            raise ValueError("--enable-torch-compile cannot be combined with "
                             "--enable-deterministic-inference: the compiled graph bypasses "
                             "the batch-invariant GEMMs and picks its reductions by batch size")
        if self.sampling_backend not in (None, "pytorch"):
            # FlashInfer's draws depend on the row's place in the batch and on one generator
            # shared by every request; the pytorch sampler's depend on the request alone.
            raise ValueError(f"--sampling-backend {self.sampling_backend} cannot be combined "
                             "with --enable-deterministic-inference: its draws depend on the "
                             "batch; use pytorch (the default in deterministic mode)")
