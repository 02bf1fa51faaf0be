"""The scheduler service's own flags (where it listens, where its peers are); the scheduling
flags are `SchedulerConfig`'s. Every field is a CLI flag of the same name.

Peer addresses are flags and environment variables alike: a flag left unset falls back to
`RADIXMESH_WORKER_ADDRESS` / `RADIXMESH_DETOKENIZER_ADDRESS`, then to the local default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from radixmesh.services.worker.service_config import DEFAULT_WORKER_ADDRESS, WORKER_ADDRESS_ENV

DEFAULT_SCHEDULER_PORT = 30010
DETOKENIZER_ADDRESS_ENV = "RADIXMESH_DETOKENIZER_ADDRESS"
DEFAULT_DETOKENIZER_ADDRESS = "127.0.0.1:30030"


@dataclass(frozen=True)
class SchedulerServiceConfig:
    """Invariant after construction: both peer addresses are set."""

    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_SCHEDULER_PORT, metadata={
        "help": "gRPC port of the Scheduler service (0: any free port)"})
    worker_address: str | None = field(default=None, metadata={
        "help": f"host:port of the model-worker (env {WORKER_ADDRESS_ENV}, "
                f"default {DEFAULT_WORKER_ADDRESS})"})
    detokenizer_address: str | None = field(default=None, metadata={
        "help": f"host:port of the detokenizer (env {DETOKENIZER_ADDRESS_ENV}, "
                f"default {DEFAULT_DETOKENIZER_ADDRESS})"})
    peer_timeout: float = field(default=600.0, metadata={
        "help": "seconds to wait at startup for the worker and detokenizer to be healthy"})
    max_inflight_steps: int = field(default=2, metadata={
        "help": "step plans sent ahead of their results (1: no pipelining)"})

    def __post_init__(self) -> None:
        # Frozen: resolved defaults are written once here, so readers never see None.
        resolve = object.__setattr__
        resolve(self, "worker_address", self.worker_address
                or os.environ.get(WORKER_ADDRESS_ENV) or DEFAULT_WORKER_ADDRESS)
        resolve(self, "detokenizer_address", self.detokenizer_address
                or os.environ.get(DETOKENIZER_ADDRESS_ENV) or DEFAULT_DETOKENIZER_ADDRESS)
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in [0, 65535]")
        if self.max_inflight_steps < 1:
            raise ValueError("--max-inflight-steps must be >= 1")
        if self.peer_timeout <= 0:
            raise ValueError("--peer-timeout must be > 0")
