"""The tokenizer service's configuration: every field is a CLI flag of the same name.

Peer addresses are flags and environment variables alike: a flag left unset falls back to
`RADIXMESH_SCHEDULER_ADDRESS` / `RADIXMESH_DETOKENIZER_ADDRESS`, then to the local default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.model_location import model_name
from radixmesh.shared.peers import peer_address, peer_help
from radixmesh.shared.tracing import TracingFlags

DEFAULT_MAX_REQUEST_BYTES = 1 << 20


@dataclass(frozen=True)
class TokenizerConfig(TracingFlags):
    """Invariant after construction: both peer addresses and `served_model_name` are set."""

    model_path: str | None = field(default=None, metadata={
        "help": "HF-format model directory whose tokenizer and chat template to use "
                "(default: the tiny random model made on first use)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "interface the HTTP and gRPC servers listen on"})
    port: int = field(default=30000, metadata={"help": "OpenAI-compatible HTTP port"})
    grpc_port: int = field(default=30001, metadata={"help": "gRPC Generation API port"})
    scheduler_address: str | None = field(default=None, metadata={
        "help": peer_help("scheduler")})
    detokenizer_address: str | None = field(default=None, metadata={
        "help": peer_help("detokenizer")})
    served_model_name: str | None = field(default=None, metadata={
        "help": "model name clients must use in OpenAI requests (default: the model "
                "directory's name)"})
    max_request_bytes: int = field(default=DEFAULT_MAX_REQUEST_BYTES, metadata={
        "help": "largest HTTP request body or gRPC message accepted, in bytes"})
    api_key: str | None = field(default=None, metadata={
        "help": "if set, HTTP clients must send `Authorization: Bearer <key>`"})

    def __post_init__(self) -> None:
        # Frozen: resolved defaults are written once here, so readers never see None.
        resolve = object.__setattr__
        resolve(self, "scheduler_address", peer_address("scheduler", self.scheduler_address))
        resolve(self, "detokenizer_address", peer_address("detokenizer", self.detokenizer_address))
        if self.served_model_name is None:
            resolve(self, "served_model_name", model_name(self.model_path))
        for name in ("port", "grpc_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 65535]")
        if self.max_request_bytes < 1024:
            raise ValueError("--max-request-bytes must be >= 1024")

