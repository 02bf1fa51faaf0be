"""The scheduler service's own flags (where it listens, where its peers are); the scheduling
flags are `SchedulerConfig`'s. Every field is a CLI flag of the same name.

Peer addresses are flags and environment variables alike: a flag left unset falls back to
`RADIXMESH_WORKER_ADDRESS` / `RADIXMESH_DETOKENIZER_ADDRESS`, then to the local default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.peers import DEFAULT_PORTS, peer_address, peer_help


@dataclass(frozen=True)
class SchedulerServiceConfig:
    """Invariant after construction: both peer addresses are set."""

    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_PORTS["scheduler"], metadata={
        "help": "gRPC port of the Scheduler service (0: any free port)"})
    worker_address: str | None = field(default=None, metadata={
        "help": peer_help("worker")})
    detokenizer_address: str | None = field(default=None, metadata={
        "help": peer_help("detokenizer")})
    peer_timeout: float = field(default=600.0, metadata={
        "help": "seconds to wait at startup for the worker and detokenizer to be healthy"})
    max_inflight_steps: int = field(default=2, metadata={
        "help": "step plans sent ahead of their results (1: no pipelining)"})

    def __post_init__(self) -> None:
        # Frozen: resolved defaults are written once here, so readers never see None.
        resolve = object.__setattr__
        resolve(self, "worker_address", peer_address("worker", self.worker_address))
        resolve(self, "detokenizer_address", peer_address("detokenizer", self.detokenizer_address))
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in [0, 65535]")
        if self.max_inflight_steps < 1:
            raise ValueError("--max-inflight-steps must be >= 1")
        if self.peer_timeout <= 0:
            raise ValueError("--peer-timeout must be > 0")
