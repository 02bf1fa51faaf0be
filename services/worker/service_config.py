"""The model-worker service's own flags (where it listens, which worker runs); the model's
flags are `WorkerConfig`'s. Every field is a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.peers import DEFAULT_PORTS

# The null worker holds no KV tensors, so its pool is only metadata: make it roomy enough for
# the null-worker workload (1000 streams of a few hundred tokens) unless told otherwise.
NULL_DEFAULT_TOTAL_TOKENS = 1 << 20
NULL_DEFAULT_MAX_RUNNING = 1024


@dataclass(frozen=True)
class WorkerServiceConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_PORTS["worker"], metadata={
        "help": "gRPC port of the Worker service (0: any free port)"})
    worker: str = field(default="model", metadata={
        "help": "model: run the model; null: no model math, fixed tokens (measures the mesh)",
        "choices": ("model", "null")})
    metrics_port: int = field(default=0, metadata={
        "help": "serve Prometheus /metrics (worker idle and forward time) on this port; 0: off"})

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 65535]")
