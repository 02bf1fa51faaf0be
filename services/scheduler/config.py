"""The scheduler service's configuration: every field is a CLI flag of the same name.

Peer addresses are flags and environment variables alike: a flag left unset falls back to
`RADIXMESH_WORKER_ADDRESS` / `RADIXMESH_DETOKENIZER_ADDRESS`, then to the local default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from radixmesh.services.scheduler.remote_flags import RemoteFetchFlags
from radixmesh.shared.peers import DEFAULT_PORTS, peer_address, peer_help
from radixmesh.shared.tls_flags import InternalTLSFlags
from radixmesh.shared.tracing import TracingFlags

# The hierarchical cache's policies, named as SGLang names them.
WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")
PREFETCH_POLICIES = ("best_effort", "wait_complete", "timeout")


@dataclass(frozen=True)
class SchedulerConfig(TracingFlags, InternalTLSFlags, RemoteFetchFlags):
    """Invariant after construction: both peer addresses are set."""

    # Where the service listens and how it reaches its peers: `radixmesh up` sets these itself
    # and the in-process engine, which has no sockets, leaves them at their defaults.
    SERVICE_FIELDS: ClassVar[frozenset[str]] = frozenset(
        {"host", "port", "worker_address", "detokenizer_address", "hicache_address",
         "peer_timeout"})

    max_running_requests: int | None = field(default=None, metadata={
        "help": "most requests decoding at once (default: what the worker's slots allow)"})
    chunked_prefill_size: int = field(default=8192, metadata={
        "help": "most prompt tokens computed in one step; longer prompts are split. -1: no limit"})
    schedule_policy: str = field(default="fcfs", metadata={
        "help": "order of the waiting queue", "choices": ("fcfs", "lpm")})
    schedule_conservativeness: float = field(default=1.0, metadata={
        "help": "higher reserves more KV for running requests' future tokens before admitting"})
    enable_mixed_chunk: bool = field(default=False, metadata={
        "help": "run the decodes of running requests in the same step as a prefill chunk "
                "(when their pages fit), so admissions do not stall decoding"})
    disable_radix_cache: bool = field(default=False, metadata={
        "help": "do not reuse KV across requests with a shared prefix"})
    random_seed: int = field(default=0, metadata={
        "help": "seeds the sampling seeds of requests that bring none"})
    decode_log_interval: int = field(default=40, metadata={
        "help": "log a decode batch line every this many decode steps"})
    enable_hierarchical_cache: bool = field(default=False, metadata={
        "help": "keep KV pages evicted from the device in host memory (L2) and, with the hicache "
                "service's storage, on disk (L3); needs the hicache service at "
                "--hicache-address"})
    hicache_write_policy: str = field(default="write_through", metadata={
        "help": "when device pages are copied to host memory: as they enter the cache, once "
                "reused, or when evicted", "choices": WRITE_POLICIES})
    hicache_prefetch_policy: str = field(default="best_effort", metadata={
        "help": "whether a request waits for its pages to come from L3: never, until they "
                "are in, or up to --hicache-prefetch-timeout", "choices": PREFETCH_POLICIES})
    hicache_prefetch_threshold: int = field(default=256, metadata={
        "help": "prompt tokens past the cached prefix below which L3 is not asked"})
    hicache_prefetch_timeout: float = field(default=3.0, metadata={
        "help": "seconds a request waits for its prefetch under the timeout policy"})
    hicache_address: str | None = field(default=None, metadata={
        "help": peer_help("hicache")})
    max_inflight_steps: int = field(default=2, metadata={
        "help": "step plans sent ahead of their results (1: no pipelining)"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_PORTS["scheduler"], metadata={
        "help": "gRPC port of the Scheduler service (0: any free port)"})
    worker_address: str | None = field(default=None, metadata={
        "help": peer_help("worker")})
    detokenizer_address: str | None = field(default=None, metadata={
        "help": peer_help("detokenizer")})
    peer_timeout: float = field(default=600.0, metadata={
        "help": "seconds to wait at startup for the worker and detokenizer to be healthy "
                "(once up, a lost peer is waited for without end, the scheduler NOT_SERVING)"})
    # Why 300 s: a healthy 8B step takes well under a second (an 8192-token prefill chunk on
    # an H100 ~0.2 s) and start-up warm-up and CUDA graph capture run before the worker reports
    # SERVING, but a kernel first used by a live step may still compile then (a FlashInfer JIT
    # module builds in tens of seconds to minutes): a step must never be taken for a hang.
    # A stopped or dead worker is caught sooner anyway, by the channel's keepalive (~10 s).
    worker_step_timeout: float = field(default=300.0, metadata={
        "help": "seconds a step's result may take before the worker is taken for hung: its "
                "running requests fail with UNAVAILABLE and the scheduler reconnects"})
    worker_lost_timeout: float = field(default=30.0, metadata={
        "help": "seconds requests queued when the worker was lost wait for a worker to come "
                "back before they fail with UNAVAILABLE"})

    def __post_init__(self) -> None:
        self.check_tls()  # TLS files named by the flags: usable, or a clear error
        self.check_remote_flags()
        # Frozen: resolved defaults are written once here, so readers never see None.
        resolve = object.__setattr__
        resolve(self, "worker_address", peer_address("worker", self.worker_address))
        resolve(self, "detokenizer_address", peer_address("detokenizer", self.detokenizer_address))
        resolve(self, "hicache_address", peer_address("hicache", self.hicache_address))
        if self.max_running_requests is not None and self.max_running_requests < 1:
            raise ValueError("--max-running-requests must be >= 1")
        if self.chunked_prefill_size == 0 or self.chunked_prefill_size < -1:
            raise ValueError("--chunked-prefill-size must be -1 or >= 1")
        if self.schedule_policy not in ("fcfs", "lpm"):
            raise ValueError(f"unknown --schedule-policy {self.schedule_policy!r}")
        if self.schedule_conservativeness <= 0:
            raise ValueError("--schedule-conservativeness must be > 0")
        if self.max_inflight_steps < 1:
            raise ValueError("--max-inflight-steps must be >= 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in [0, 65535]")
        if self.peer_timeout <= 0:
            raise ValueError("--peer-timeout must be > 0")
        if self.worker_step_timeout <= 0 or self.worker_lost_timeout < 0:
            raise ValueError("--worker-step-timeout must be > 0 and --worker-lost-timeout >= 0")
        if self.hicache_prefetch_threshold < 1 or self.hicache_prefetch_timeout < 0:
            raise ValueError("--hicache-prefetch-threshold must be >= 1 and "
                             "--hicache-prefetch-timeout >= 0")
