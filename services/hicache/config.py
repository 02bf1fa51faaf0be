"""The hicache service's configuration: every field is a CLI flag of the same name (SGLang's)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from pathlib import Path

from radixmesh.services.hicache.page_index.flags import check_index_flags
from radixmesh.services.hicache.storage import STORAGE_BACKENDS
from radixmesh.services.hicache.storage.page_directory import default_capacity
from radixmesh.shared.model_location import radixmesh_home
from radixmesh.shared.peers import DEFAULT_PORTS
from radixmesh.shared.tls_flags import InternalTLSFlags
from radixmesh.shared.tracing import TracingFlags

# SGLang sizes host memory in decimal gigabytes (`--hicache-size 30` is 30e9 bytes).
GB = 10**9


@dataclass(frozen=True)
class HiCacheConfig(TracingFlags, InternalTLSFlags):
    """Invariant after construction: `hicache_storage_dir` and `node_id` are set."""

    host: str = field(default="127.0.0.1", metadata={"help": "interface to listen on"})
    port: int = field(default=DEFAULT_PORTS["hicache"], metadata={
        "help": "gRPC port of the HiCache service (0: any free port)"})
    hicache_ratio: float = field(default=2.0, metadata={
        "help": "L2 host slots as a multiple of the device pages the scheduler reports"})
    hicache_size: float = field(default=0.0, metadata={
        "help": "L2 host memory in GB (0: size it by --hicache-ratio instead)"})
    hicache_storage_backend: str | None = field(default=None, metadata={
        "help": "L3 storage beyond host memory (default: none)",
        "choices": tuple(STORAGE_BACKENDS.names())})
    hicache_storage_dir: str | None = field(default=None, metadata={
        "help": "directory of the file backend (default: $RADIXMESH_HOME/hicache); several "
                "services may share one (`radixmesh up --dp-size N` has its replicas do)"})
    hicache_storage_size: float | None = field(default=None, metadata={
        "help": "L3 cap in GB, least recently used pages evicted past it (default: the "
                "disk's free space at start less 10%%); the directory's whole: the "
                "replicas of `up --dp-size N` keep to 1/N each"})
    metrics_port: int = field(default=0, metadata={
        "help": "port of the Prometheus /metrics endpoint (0: off)"})
    # The cross-node page index (design §4 "Redis holds"): see page_index/redis_index.py.
    # Kept out of repr: the URL may carry a password.
    hicache_redis_url: str | None = field(default=None, repr=False, metadata={
        "help": "redis:// or rediss:// URL of the cross-node page index, user and password "
                "in the URL as the redis package reads them (default: no index); needs "
                "--hicache-storage-backend: the index advertises this node's L3 pages"})
    hicache_redis_cluster: bool = field(default=False, metadata={
        "help": "--hicache-redis-url names one node of a Redis Cluster (the client finds the "
                "others); the index uses no cross-slot command either way"})
    node_id: str | None = field(default=None, metadata={
        "help": "this node's name in the page index (default: the host name); `radixmesh up "
                "--dp-size N` names replica i's hicache service NAME-i"})
    hicache_advertise_address: str | None = field(default=None, metadata={
        "help": "host:port where other nodes reach this hicache service, stored in its index "
                "entries (default: --host and the port it listens on)"})
    hicache_redis_key_prefix: str = field(default="radixmesh:", metadata={
        "help": "prefix of every Redis key of the index, so deployments can share one Redis"})
    hicache_redis_timeout: float = field(default=0.2, metadata={
        "help": "seconds a Redis lookup may take; past it (or on any Redis error) the lookup "
                "is a miss"})
    hicache_redis_ttl: int = field(default=300, metadata={
        "help": "seconds an index entry lives unless refreshed (refreshed every third of it "
                "while the page lives)"})

    def __post_init__(self) -> None:
        self.check_tls()  # TLS files named by the flags: usable, or a clear error
        if self.hicache_storage_dir is None:
            # Frozen: the resolved default is written once here, so readers never see None.
            object.__setattr__(self, "hicache_storage_dir", str(radixmesh_home() / "hicache"))
        for flag, port in (("--port", self.port), ("--metrics-port", self.metrics_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{flag} must be in [0, 65535], got {port}")
        if not self.hicache_ratio > 0:
            raise ValueError(f"--hicache-ratio must be > 0, got {self.hicache_ratio}")
        if not self.hicache_size >= 0:
            raise ValueError(f"--hicache-size must be >= 0 GB, got {self.hicache_size}")
        if (self.hicache_storage_backend is not None
                and self.hicache_storage_backend not in STORAGE_BACKENDS):
            raise ValueError(f"--hicache-storage-backend must be one of "
                             f"{', '.join(STORAGE_BACKENDS.names())}, "
                             f"got {self.hicache_storage_backend!r}")
        if self.hicache_storage_size is not None and not self.hicache_storage_size > 0:
            raise ValueError(f"--hicache-storage-size must be > 0 GB, "
                             f"got {self.hicache_storage_size}")
        if self.node_id is None:
            object.__setattr__(self, "node_id", socket.gethostname())
        check_index_flags(self)

    @property
    def host_pool_bytes(self) -> int | None:
        """L2 in bytes when sized in GB; None when it follows the device pool by the ratio."""
        return int(self.hicache_size * GB) if self.hicache_size > 0 else None

    @property
    def storage_capacity_bytes(self) -> int | None:
        """The L3 cap in bytes; None lets the backend take the free disk less 10%."""
        size = self.hicache_storage_size
        return None if size is None else int(size * GB)

    def shared_by(self, count: int) -> HiCacheConfig:
        """This config for one of `count` services on one L3 directory (`up --dp-size`'s
        replicas): the cap, given or the file backend's default, is the directory's, so each
        keeps to an equal share of it and together they keep to it."""
        if count == 1 or self.hicache_storage_backend is None:
            return self
        total = self.storage_capacity_bytes
        if total is None:
            total = default_capacity(Path(self.hicache_storage_dir))
        return replace(self, hicache_storage_size=total / count / GB)
