"""OpenTelemetry for every service, set up in one place (design §6).

Each service's config inherits `TracingFlags` (`--enable-trace`, `--otlp-traces-endpoint`, as
SGLang names them) and its server calls `start_tracing` once. Off, nothing of the SDK is
created and every `SpanRecorder` call returns at its first line. On, a `TracerProvider` with
the real OTLP gRPC exporter behind a bounded batch queue: a span that finds the queue full is
dropped and counted, never waited for, so a missing or slow receiver cannot slow a request.

The standard `OTEL_*` variables are honoured: `OTEL_SERVICE_NAME` (and
`OTEL_RESOURCE_ATTRIBUTES`), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`
when the flag is not given, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` (only `grpc` ships), and at
a front door (a node's tokenizer, or the router in front of nodes) `OTEL_TRACES_SAMPLER` with
`OTEL_TRACES_SAMPLER_ARG`. Sampling is decided where a request comes in: the other services
follow the `sampled` flag their requests carry (behind a router, a node's front door follows
the router's decision, which its parent-based default sampler honours).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

from radixmesh.shared.span_recorder import DISABLED, SpanRecorder

logger = logging.getLogger(__name__)

DEFAULT_OTLP_ENDPOINT = "localhost:4317"
SHUTDOWN_FLUSH_S = 5.0  # design §6: shutdown waits for the exporter this long at most
EXPORT_TIMEOUT_S = 5.0
FRONT_DOOR = "tokenizer"  # a node's front door
ROUTER = "router"         # the front door in front of several nodes
FRONT_DOORS = (FRONT_DOOR, ROUTER)  # the services whose sampler decides


@dataclass(frozen=True)
class TracingFlags:
    """Inherited by every service's config, so `--enable-trace` is a flag of each."""

    enable_trace: bool = field(default=False, metadata={
        "help": "export OpenTelemetry spans over OTLP/gRPC (Jaeger, an OTel collector); off, "
                "nothing of the tracing SDK is created"})
    otlp_traces_endpoint: str | None = field(default=None, metadata={
        "help": "HOST:PORT of the OTLP gRPC receiver (default: OTEL_EXPORTER_OTLP_TRACES_"
                f"ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, else {DEFAULT_OTLP_ENDPOINT})"})


def start_tracing(service: str, flags: TracingFlags) -> SpanRecorder:
    """The service's recorder: DISABLED unless `--enable-trace`. Call `stop_tracing` at exit."""
    if not flags.enable_trace:
        return DISABLED
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    endpoint = otlp_endpoint(flags)
    # Resource.create lets OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES override the default.
    resource = Resource.create({SERVICE_NAME: f"radixmesh-{service}"} | _env_resource())
    # None: the SDK reads OTEL_TRACES_SAMPLER (default parent-based always-on). Elsewhere a
    # request's flag decides, and the only roots made (worker.step) follow a sampled request.
    sampler = None if service in FRONT_DOORS else ParentBased(ALWAYS_ON)
    provider = TracerProvider(resource=resource, sampler=sampler)
    from radixmesh.shared.span_queue import CountingSpanQueue

    queue = CountingSpanQueue(_exporter(endpoint))
    provider.add_span_processor(queue)
    logger.info("tracing on: OTLP to %s as %s", endpoint,
                resource.attributes.get(SERVICE_NAME))
    return SpanRecorder(provider.get_tracer("radixmesh"), provider, queue)


def stop_tracing(recorder: SpanRecorder) -> None:
    """Flushes what is queued, for at most SHUTDOWN_FLUSH_S, then lets the exporter go."""
    if recorder.provider is None:
        return
    done = threading.Thread(target=recorder.provider.shutdown, daemon=True,
                            name="otel-shutdown")
    done.start()
    done.join(SHUTDOWN_FLUSH_S)
    if done.is_alive():
        logger.warning("tracing: spans still queued after %.0f s were dropped", SHUTDOWN_FLUSH_S)


def otlp_endpoint(flags: TracingFlags) -> str:
    return (flags.otlp_traces_endpoint
            or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or DEFAULT_OTLP_ENDPOINT)


def _exporter(endpoint: str):
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
    if protocol != "grpc":
        raise ValueError(f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL={protocol!r}: radixmesh exports "
                         "OTLP over gRPC only; unset it or set it to 'grpc'")
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # A scheme-less HOST:PORT is plain text, as a local collector or Jaeger listens.
    insecure = not endpoint.startswith("https://")
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure, timeout=EXPORT_TIMEOUT_S)


def _env_resource() -> dict[str, str]:
    # OTEL_SERVICE_NAME outranks our default name; Resource.create reads it too, but only
    # after the attributes given here, which would win.
    name = os.environ.get("OTEL_SERVICE_NAME")
    return {"service.name": name} if name else {}
