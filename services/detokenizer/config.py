"""The detokenizer service's configuration: every field is a CLI flag of the same name."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixmesh.shared.hub import HubFlags
from radixmesh.shared.peers import DEFAULT_PORTS
from radixmesh.shared.tls_flags import InternalTLSFlags
from radixmesh.shared.tracing import TracingFlags


@dataclass(frozen=True)
class DetokenizerConfig(TracingFlags, HubFlags, InternalTLSFlags):
    model_path: str | None = field(default=None, metadata={
        "help": "HF-format model directory whose tokenizer decodes the output (default: the "
                "tiny random model made on first use); without a tokenizer, ids pass through "
                "with empty text"})
    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_PORTS["detokenizer"], metadata={
        "help": "gRPC port of the Detokenizer service (0: any free port)"})

    def __post_init__(self) -> None:
        self.check_tls()  # TLS files named by the flags: usable, or a clear error
        if not 0 <= self.port <= 65535:
            raise ValueError("--port must be in [0, 65535]")
