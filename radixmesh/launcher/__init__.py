"""`radixmesh up`: the whole mesh on this machine, one process per service.

Starts the worker, detokenizer, scheduler and tokenizer, waits until each reports healthy,
prints the endpoints, and runs until Ctrl-C or SIGTERM (exit 0), stopping every service on
the way out. A service that exits once the mesh is up is restarted on the same address with
backoff while the others stay up (`supervisor.py`); a crash loop, or any exit under
`--restart-policy never`, stops the others and the exit status is 1. A service that exits
before the mesh is first up fails `up` at once: that is a configuration error, not a fault.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import threading

from radixmesh.launcher.mesh_plan import (
    HICACHE_WIRING,
    SCHEDULER_WIRING,
    TOKENIZER_WIRING,
    WORKER_WIRING,
    MeshPlan,
    ServiceCommand,
    UpConfig,
    plan_mesh,
)
from radixmesh.launcher.processes import ServiceExitedError, ServiceGroup
from radixmesh.launcher.supervisor import RestartPolicy, Supervisor
from radixmesh.launcher.tls_setup import self_signed_message, self_signed_tls
from radixmesh.launcher.watch import say, watch
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.cli_args import add_config_arguments, config_from_args
from radixmesh.shared.model_location import resolve_model_path

logger = logging.getLogger(__name__)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    # Flags two services share (--max-running-requests, --random-seed) are listed once, by
    # the first config, and reach both. The front door's --model-path is the worker's.
    add_config_arguments(parser, UpConfig)
    add_config_arguments(parser, WorkerConfig, skip=WORKER_WIRING)
    add_config_arguments(parser, SchedulerConfig, skip=SCHEDULER_WIRING)
    add_config_arguments(parser, TokenizerConfig, skip=TOKENIZER_WIRING)
    add_config_arguments(parser, HiCacheConfig, skip=HICACHE_WIRING)


def run_cli(args: argparse.Namespace) -> int:
    # The stack removes throwaway certificates once every service has stopped.
    with contextlib.ExitStack() as cleanup:
        try:
            up = config_from_args(UpConfig, args)
            if up.ssl_self_signed:
                say(self_signed_message(cleanup.enter_context(self_signed_tls(args))))
            plan = _plan_from_args(up, args)
        except ValueError as error:  # a config rejected a flag
            logger.error("%s", error)
            print(f"radixmesh up: {error}")
            return 2
        return _run_until_stopped(plan, up)


def _run_until_stopped(plan: MeshPlan, up: UpConfig) -> int:
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    group = ServiceGroup()
    try:
        return _run(plan, group, stop, up)
    finally:
        group.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _plan_from_args(up: UpConfig, args: argparse.Namespace) -> MeshPlan:
    worker = config_from_args(WorkerConfig, args)
    # Resolved once here, so every service reads the same directory: the default model (made
    # on first use), or a hub id's snapshot (downloaded once; the token never reaches a
    # service's command line).
    if worker.model_path is None:
        from radixmesh.make_model import default_model_path
        model_path = default_model_path()
    else:
        model_path = resolve_model_path(worker.model_path, worker.revision, worker.hf_token)
    worker = dataclasses.replace(worker, model_path=str(model_path), revision=None,
                                 hf_token=None)
    args.model_path = worker.model_path
    return plan_mesh(up, worker,
                     config_from_args(SchedulerConfig, args),
                     config_from_args(TokenizerConfig, args),
                     logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
                     config_from_args(HiCacheConfig, args))


def restart_policy(up: UpConfig) -> RestartPolicy:
    return RestartPolicy(restart=up.restart_policy == "always", backoff=up.restart_backoff,
                         backoff_max=up.restart_backoff_max, max_restarts=up.max_restarts,
                         window=up.restart_window)


def _run(plan: MeshPlan, group: ServiceGroup, stop: threading.Event, up: UpConfig) -> int:
    group.start(plan.services)
    try:
        if not group.wait_healthy(up.startup_timeout, stop.is_set):
            return 0  # stopped by a signal during startup
    except (ServiceExitedError, TimeoutError) as error:
        say(f"{error}; stopping the mesh")
        return 1
    _print_endpoints(plan)
    supervisor = Supervisor([command.name for command in plan.services], restart_policy(up))
    status = watch(group, supervisor, stop)
    if status == 0:
        say("stopping")
    return status


def _print_endpoints(plan: MeshPlan) -> None:
    print(endpoints_text(plan), flush=True)


def endpoints_text(plan: MeshPlan) -> str:
    """What `up` prints once every service is healthy: one `NAME  ADDRESS` line per endpoint
    (tests and scripts read those two columns), then a note in parentheses that gives the
    service's Prometheus /metrics URL where it serves one."""
    [front_door] = [command for command in plan.services if command.name == "tokenizer"]
    lines = ["radixmesh is up:",
             f"  OpenAI HTTP  {plan.http_url}/v1{_note(front_door)}",
             f"  gRPC         {plan.grpc_address}"]
    lines += [f"  {command.name:<12} {command.health_address}{_note(command, 'internal')}"
              for command in plan.services if command.name != "tokenizer"]
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def _note(command: ServiceCommand, *parts: str) -> str:
    if command.metrics_url is not None:
        parts += (f"metrics: {command.metrics_url}",)
    return f"  ({'; '.join(parts)})" if parts else ""
