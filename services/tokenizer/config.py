"""The tokenizer service's configuration: every field is a CLI flag of the same name.

The public flags (ports, keys, TLS, limits) are every front door's (`shared/front_door/flags.py`);
the mesh's own are here. Peer addresses are flags and environment variables alike: a flag left
unset falls back to `RADIXMESH_SCHEDULER_ADDRESS` / `RADIXMESH_DETOKENIZER_ADDRESS`, then to
the local default.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from radixmesh.shared.front_door.flags import (
    DEFAULT_MAX_JSON_DEPTH,
    DEFAULT_MAX_REQUEST_BYTES,
    FrontDoorFlags,
)
from radixmesh.shared.node_registry import DEFAULT_HEARTBEAT_S, DEFAULT_PREFIX, DEFAULT_TTL_S
from radixmesh.shared.peers import peer_address, peer_help
from radixmesh.shared.redis_connect import check_redis_url

__all__ = ["DEFAULT_MAX_JSON_DEPTH", "DEFAULT_MAX_REQUEST_BYTES", "TokenizerConfig"]


@dataclass(frozen=True)
class TokenizerConfig(FrontDoorFlags):
    """Invariant after construction: both peer addresses and `served_model_name` are set."""

    scheduler_address: str | None = field(default=None, metadata={
        "help": peer_help("scheduler") + "; several, comma-separated, for data-parallel "
                "replicas (one scheduler each)"})
    detokenizer_address: str | None = field(default=None, metadata={
        "help": peer_help("detokenizer")})
    node_id: str | None = field(default=None, metadata={
        "help": "this node's name, in the router's registry and the page index (default: "
                "the host name)"})
    registry_redis_url: str | None = field(default=None, metadata={
        "help": "Redis where this node registers itself for routers (node id, address, "
                "load), renewed every --registry-heartbeat (default: no registration)"})
    registry_key_prefix: str = field(default=DEFAULT_PREFIX, metadata={
        "help": "prefix of the registration's Redis key (the router's --registry-key-prefix)"})
    registry_heartbeat: float = field(default=DEFAULT_HEARTBEAT_S, metadata={
        "help": "seconds between registrations"})
    registry_ttl: float = field(default=DEFAULT_TTL_S, metadata={
        "help": "seconds a registration lasts without a heartbeat: a node that stops beating "
                "leaves the routers' choice within it"})
    stream_interval: int = field(default=1, metadata={
        "help": "send a stream's update every this many output tokens (the first token and "
                "the finish at once), merging the text and token ids in between into one "
                "gRPC message / SSE chunk: fewer messages per token at the public edge, "
                "coarser streaming (as SGLang's --stream-interval)"})
    advertise_address: str | None = field(default=None, metadata={
        "help": "HOST:PORT routers dial for this node's gRPC API (default: --host and "
                "--grpc-port; the host name when --host is 0.0.0.0)"})

    @property
    def scheduler_addresses(self) -> tuple[str, ...]:
        """One scheduler per data-parallel replica."""
        return tuple(address.strip() for address in self.scheduler_address.split(","))

    def __post_init__(self) -> None:
        super().__post_init__()
        # Frozen: resolved defaults are written once here, so readers never see None.
        resolve = object.__setattr__
        resolve(self, "scheduler_address", peer_address("scheduler", self.scheduler_address))
        resolve(self, "detokenizer_address", peer_address("detokenizer", self.detokenizer_address))
        if self.stream_interval < 1:
            raise ValueError("--stream-interval must be >= 1")
        if not all(self.scheduler_addresses):
            raise ValueError(f"--scheduler-address {self.scheduler_address!r}: an empty address")
        if self.registry_redis_url is not None:
            check_redis_url("--registry-redis-url", self.registry_redis_url)
            if not 0 < self.registry_heartbeat < self.registry_ttl:
                raise ValueError("--registry-heartbeat must be > 0 and below --registry-ttl")

    @property
    def registry_node_id(self) -> str:
        return self.node_id or socket.gethostname()

    @property
    def registry_address(self) -> str:
        """Where routers dial this node's gRPC API."""
        if self.advertise_address:
            return self.advertise_address
        host = socket.gethostname() if self.host in ("0.0.0.0", "::", "") else self.host
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"
