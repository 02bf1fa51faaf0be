"""What `radixmesh up` starts: one command line per service, wired to each other's ports.

Internal services listen on 127.0.0.1 at ports picked free at launch; only the front door
listens on `--host` at the public ports. Every other flag goes to the service whose config
has it, and only where it differs from the default, so each service keeps its own defaults.
The internal TLS flags reach every service, the public ones the front door (`tls_setup.py`).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from radixmesh.launcher.free_ports import MESH_INTERNAL_PORTS, pick_free_ports
from radixmesh.launcher.tls_setup import front_door_probe_tls, internal_tls_argv
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.grpc_service import host_port
from radixmesh.shared.tls import ClientTLS, internal_client_tls
from radixmesh.shared.tls_flags import InternalTLSFlags
from radixmesh.shared.tracing import TracingFlags

INTERNAL_HOST = "127.0.0.1"
# Set by the launcher itself, never taken from the user's flags: where each internal service
# listens and finds its peers. The front door's host and ports stay the user's.
WORKER_WIRING = WorkerConfig.SERVICE_FIELDS
SCHEDULER_WIRING = SchedulerConfig.SERVICE_FIELDS
# revision and hf_token: `up` resolved the hub id once; the services get the directory.
TOKENIZER_WIRING = frozenset({"scheduler_address", "detokenizer_address", "model_path",
                              "revision", "hf_token"})
# `--metrics-port` would be ambiguous in `up`: the worker's and the hicache service's are
# UpConfig's --worker-metrics-port and --hicache-metrics-port.
HICACHE_WIRING = frozenset({"host", "port", "metrics_port"})
# One source for every internal service's TLS flags (the front door's config, which has them
# all), so no two services of one mesh can disagree on whether the links are encrypted.
INTERNAL_TLS_FIELDS = frozenset(spec.name for spec in dataclasses.fields(InternalTLSFlags))


@dataclass(frozen=True)
class UpConfig:
    startup_timeout: float = field(default=600.0, metadata={
        "help": "seconds to wait for every service to report healthy"})
    hicache_metrics_port: int = field(default=0, metadata={
        "help": "port of the hicache service's Prometheus /metrics (0: off); with --dp-size N, "
                "replica i's hicache service serves it on this port + i"})
    worker_metrics_port: int = field(default=0, metadata={
        "help": "port of the worker's Prometheus /metrics: idle time between steps, forward "
                "time (0: off); with --dp-size N, replica i's worker serves it on this port + i"})
    restart_policy: str = field(default="always", metadata={
        "choices": ("always", "never"),
        "help": "what to do when a service exits once the mesh is up: restart it on the same "
                "address, with backoff, while the others stay up (always), or stop the whole "
                "mesh (never)"})
    restart_backoff: float = field(default=0.5, metadata={
        "help": "seconds before the first restart of a service; doubled for each further "
                "restart, up to --restart-backoff-max"})
    restart_backoff_max: float = field(default=10.0, metadata={
        "help": "the longest wait before a restart, in seconds"})
    max_restarts: int = field(default=5, metadata={
        "help": "restarts of one service within --restart-window before `up` takes it for a "
                "crash loop and stops the mesh (0: no limit)"})
    restart_window: float = field(default=60.0, metadata={
        "help": "seconds over which --max-restarts counts; a service healthy for this long "
                "starts its backoff over"})
    dp_size: int = field(default=1, metadata={
        "aliases": ("--dp",),
        "help": "data-parallel replicas: this many schedulers, each with its own worker (group "
                "of --tp-size ranks), behind one front door and one detokenizer; the front door "
                "sends a request to the replica holding most of its prompt unless loads are "
                "far apart. With --enable-hierarchical-cache each replica also gets its own "
                "hicache service (hicache-0, ...: its own host memory pool, --node-id NODE-i in "
                "the page index), and the replicas share the L3 directory, so a page one "
                "replica wrote is read by the others"})
    ssl_self_signed: bool = field(default=False, metadata={
        "help": "generate a throwaway CA and certificates (in a private temporary directory, "
                "removed at exit) and turn on TLS on the public ports and mutual TLS between "
                "services with them; prints where the CA certificate is for clients to trust"})

    def __post_init__(self) -> None:
        for flag, port in (("--hicache-metrics-port", self.hicache_metrics_port),
                           ("--worker-metrics-port", self.worker_metrics_port)):
            if not 0 <= port <= 65535:
                raise ValueError(f"{flag} must be in [0, 65535], got {port}")
            if port and port + self.dp_size - 1 > 65535:
                raise ValueError(f"{flag} {port} + --dp-size {self.dp_size} - 1 passes 65535")
        if self.restart_policy not in ("always", "never"):
            raise ValueError(f"--restart-policy must be always or never, "
                             f"got {self.restart_policy!r}")
        if not 0 <= self.restart_backoff <= self.restart_backoff_max:
            raise ValueError("--restart-backoff must be in [0, --restart-backoff-max]")
        if self.dp_size < 1:
            raise ValueError("--dp-size must be >= 1")
        if self.max_restarts < 0 or self.restart_window <= 0:
            raise ValueError("--max-restarts must be >= 0 and --restart-window > 0")


@dataclass(frozen=True)
class ServiceCommand:
    name: str
    argv: tuple[str, ...]
    health_address: str  # host:port whose gRPC health says when the service is up
    metrics_url: str | None = None  # its Prometheus /metrics, where it serves one
    probe_tls: ClientTLS | None = None  # how `up` reaches its health, when it speaks TLS


@dataclass(frozen=True)
class MeshPlan:
    """The services in start order; they are stopped in reverse."""

    services: tuple[ServiceCommand, ...]
    http_url: str
    grpc_address: str


def plan_mesh(up: UpConfig, worker: WorkerConfig, scheduler: SchedulerConfig,
              front_door: TokenizerConfig, log_level: str,
              hicache: HiCacheConfig | None = None) -> MeshPlan:
    """`worker.model_path` must be resolved: every service reads the same directory. The
    wiring fields of `worker` and `scheduler` are ignored: the plan sets them, and every
    service's internal TLS flags are `front_door`'s. The hicache service runs when the
    scheduler's --enable-hierarchical-cache asks for it. With --dp-size N, N replicas (a
    scheduler and its worker each, named scheduler-0, worker-0, ..., and with the hierarchical
    cache a hicache service each, hicache-0, ...) share the detokenizer and the front door."""
    assert worker.model_path is not None, "resolve the model path before planning"
    tiered = scheduler.enable_hierarchical_cache
    hicache = hicache or HiCacheConfig()
    if up.dp_size > 1 and tiered and hicache.hicache_advertise_address is not None:
        raise ValueError("--hicache-advertise-address names one hicache service; with "
                         "--dp-size > 1 each replica has its own, on a port `up` picks")
    # Every internal port in one pick, so none repeats, and none a public port: gRPC would
    # not stop two services sharing one. Per replica: its worker, its scheduler, its hicache.
    public = {front_door.port, front_door.grpc_port,
              *replica_ports(up.hicache_metrics_port if tiered else 0, up.dp_size),
              *replica_ports(up.worker_metrics_port, up.dp_size)}
    per_replica = 3 if tiered else 2
    detok_port, *ports = pick_free_ports(1 + per_replica * up.dp_size, public,
                                         within=MESH_INTERNAL_PORTS)
    detok_address = host_port(INTERNAL_HOST, detok_port)
    model = ("--model-path", worker.model_path)
    tls, probe = internal_tls_argv(front_door), internal_client_tls(front_door)
    own = [ports[per_replica * index:per_replica * (index + 1)] for index in range(up.dp_size)]
    hicache_services = []
    if tiered:  # the replicas share one L3 directory, and so its cap
        replica_hicache = hicache.shared_by(up.dp_size)
        hicache_services = [_hicache(index, up, replica_hicache, log_level, tls, probe,
                                     own[index][2]) for index in range(up.dp_size)]
    replicas = [_replica(index, up, worker, scheduler, log_level, tls, probe, detok_address,
                         hicache_services[index].health_address if tiered else None,
                         own[index][:2])
                for index in range(up.dp_size)]
    scheme = "https" if front_door.public_tls_on else "http"
    http_url = f"{scheme}://{host_port(_reachable(front_door.host), front_door.port)}"
    services = (
        *(replica_worker for replica_worker, _ in replicas),
        ServiceCommand("detokenizer", serve_argv(
            log_level, "detokenizer", "--host", INTERNAL_HOST, "--port", str(detok_port),
            *model, *tracing_argv(front_door), *tls), detok_address, probe_tls=probe),
        *hicache_services,
        *(replica_scheduler for _, replica_scheduler in replicas),
        ServiceCommand("tokenizer", serve_argv(
            log_level, "tokenizer", "--scheduler-address",
            ",".join(replica_scheduler.health_address for _, replica_scheduler in replicas),
            "--detokenizer-address", detok_address, *model,
            *config_to_argv(front_door, skip=TOKENIZER_WIRING)),
            host_port(_reachable(front_door.host), front_door.grpc_port),
            f"{http_url}/metrics",  # served beside the OpenAI API, always
            front_door_probe_tls(front_door, _reachable(front_door.host))),
    )
    return MeshPlan(services, http_url, host_port(_reachable(front_door.host),
                                                  front_door.grpc_port))


def _hicache(index: int, up: UpConfig, hicache: HiCacheConfig, log_level: str,
             tls: list[str], probe: ClientTLS | None, port: int) -> ServiceCommand:
    """Replica `index`'s hicache service: a host pool of its own (its shared memory name is
    new at every start: `services/hicache/cache.py`), metrics on --hicache-metrics-port +
    index, and node `--node-id`-index in the page index, whose entries are per (page key,
    holder). All replicas share the L3 directory: a page is named by its content's key, and
    the file backend is safe to share (`storage/file_backend.py`), so all find what one wrote."""
    suffix, node, skip = "", (), HICACHE_WIRING | INTERNAL_TLS_FIELDS
    if up.dp_size > 1:
        suffix, node = f"-{index}", ("--node-id", f"{hicache.node_id}-{index}")
        skip |= {"node_id"}
    metrics_port = up.hicache_metrics_port + index if up.hicache_metrics_port else 0
    return ServiceCommand(f"hicache{suffix}", serve_argv(
        log_level, "hicache", "--host", INTERNAL_HOST, "--port", str(port),
        *metrics_argv(metrics_port), *tls, *node, *config_to_argv(hicache, skip=skip)),
        host_port(INTERNAL_HOST, port), metrics_url(INTERNAL_HOST, metrics_port), probe)


def _replica(index: int, up: UpConfig, worker: WorkerConfig, scheduler: SchedulerConfig,
             log_level: str, tls: list[str], probe: ClientTLS | None, detok_address: str,
             hicache_address: str | None, ports: Sequence[int],
             ) -> tuple[ServiceCommand, ServiceCommand]:
    """Data-parallel replica `index`: its worker (group) and its scheduler, on `ports`. One
    replica keeps the plain names; a replica's worker metrics port is
    --worker-metrics-port + index."""
    worker_port, scheduler_port = ports
    worker_address = host_port(INTERNAL_HOST, worker_port)
    scheduler_address = host_port(INTERNAL_HOST, scheduler_port)
    suffix = f"-{index}" if up.dp_size > 1 else ""
    metrics_port = up.worker_metrics_port + index if up.worker_metrics_port else 0
    # Replica i's ranks take the devices after replica i-1's (a GPU machine; no-op on CPU).
    devices = ("--base-gpu-id", str(index * worker.tp_size)) if index else ()
    worker_command = ServiceCommand(f"worker{suffix}", serve_argv(
        log_level, "worker", "--host", INTERNAL_HOST, "--port", str(worker_port),
        *metrics_argv(metrics_port), *tls, *devices,
        *config_to_argv(worker, skip=WORKER_WIRING | INTERNAL_TLS_FIELDS)),
        worker_address, metrics_url(INTERNAL_HOST, metrics_port), probe)
    scheduler_command = ServiceCommand(f"scheduler{suffix}", serve_argv(
        log_level, "scheduler", "--host", INTERNAL_HOST, "--port", str(scheduler_port),
        "--worker-address", worker_address, "--detokenizer-address", detok_address,
        *(("--hicache-address", hicache_address) if hicache_address else ()),
        "--peer-timeout", str(up.startup_timeout), *tls,
        *config_to_argv(scheduler, skip=SCHEDULER_WIRING | INTERNAL_TLS_FIELDS)),
        scheduler_address, probe_tls=probe)
    return worker_command, scheduler_command


def serve_argv(log_level: str, service: str, *flags: str) -> tuple[str, ...]:
    # `radixmesh.serve` rather than the full CLI: it skips seconds of unrelated imports.
    # -P: the launcher's working directory stays off sys.path, so a checkout's top-level
    # folders (kernels/ above all, which transformers imports by that name) never shadow
    # installed packages in a service.
    return (sys.executable, "-P", "-m", "radixmesh.serve", "--log-level", log_level, service, *flags)


def replica_ports(base: int, dp_size: int) -> range:
    """The ports of a per-replica endpoint numbered from `base` (replica i: base + i); none
    when `base` is 0 (off)."""
    return range(base, base + dp_size) if base else range(0)


def metrics_argv(port: int) -> tuple[str, ...]:
    """A service's `--metrics-port`, when `up` was given one for it (0: off)."""
    return ("--metrics-port", str(port)) if port else ()


def metrics_url(host: str, port: int) -> str | None:
    return f"http://{host_port(host, port)}/metrics" if port else None


def config_to_argv(config: object, skip: frozenset[str] = frozenset()) -> list[str]:
    """The flags that reproduce `config`'s non-default fields (`shared/cli_args.py` naming)."""
    argv: list[str] = []
    for spec in dataclasses.fields(config):
        value = getattr(config, spec.name)
        if spec.name in skip or value == spec.default or value is None:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):  # a repeatable flag (`shared/cli_args.py`)
            argv.extend(part for item in value for part in (flag, str(item)))
        else:
            argv.extend((flag, str(value)))
    return argv


def tracing_argv(config: TracingFlags) -> list[str]:
    """The tracing flags of `config`, for a service whose other flags the launcher sets."""
    return config_to_argv(TracingFlags(config.enable_trace, config.otlp_traces_endpoint))


def _reachable(host: str) -> str:
    """Where a local client reaches a server listening on `host`."""
    return INTERNAL_HOST if host in ("0.0.0.0", "", "::") else host
