"""`radixmesh up`: the whole mesh on this machine, one process per service.

Starts the worker, detokenizer, scheduler and tokenizer, waits until each reports healthy,
prints the endpoints, and runs until Ctrl-C or SIGTERM (exit 0), stopping every service on
the way out. If a service dies, the others are stopped and the exit status is 1.
"""

from __future__ import annotations

import argparse
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
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.cli_args import add_config_arguments, config_from_args

logger = logging.getLogger(__name__)
WATCH_INTERVAL_S = 0.2


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    # Flags two services share (--max-running-requests, --random-seed) are listed once, by
    # the first config, and reach both. The front door's --model-path is the worker's.
    add_config_arguments(parser, UpConfig)
    add_config_arguments(parser, WorkerConfig, skip=WORKER_WIRING)
    add_config_arguments(parser, SchedulerConfig, skip=SCHEDULER_WIRING)
    add_config_arguments(parser, TokenizerConfig, skip=TOKENIZER_WIRING)
    add_config_arguments(parser, HiCacheConfig, skip=HICACHE_WIRING)


def run_cli(args: argparse.Namespace) -> int:
    try:
        plan = _plan_from_args(args)
    except ValueError as error:  # a config rejected a flag
        logger.error("%s", error)
        print(f"radixmesh up: {error}")
        return 2
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set())
                for signum in (signal.SIGINT, signal.SIGTERM)}
    group = ServiceGroup()
    try:
        return _run(plan, group, stop, args.startup_timeout)
    finally:
        group.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _plan_from_args(args: argparse.Namespace) -> MeshPlan:
    worker = config_from_args(WorkerConfig, args)
    if worker.model_path is None:  # resolved once here, so every service reads the same one
        from radixmesh.make_model import default_model_path
        worker = dataclasses.replace(worker, model_path=str(default_model_path()))
    args.model_path = worker.model_path
    return plan_mesh(config_from_args(UpConfig, args), worker,
                     config_from_args(SchedulerConfig, args),
                     config_from_args(TokenizerConfig, args),
                     logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
                     config_from_args(HiCacheConfig, args))


def _run(plan: MeshPlan, group: ServiceGroup, stop: threading.Event, timeout: float) -> int:
    group.start(plan.services)
    try:
        if not group.wait_healthy(timeout, stop.is_set):
            return 0  # stopped by a signal during startup
    except (ServiceExitedError, TimeoutError) as error:
        print(f"radixmesh up: {error}; stopping the mesh", flush=True)
        return 1
    _print_endpoints(plan)
    while not stop.wait(WATCH_INTERVAL_S):
        try:
            group.check_alive()
        except ServiceExitedError as error:
            print(f"radixmesh up: {error}; stopping the mesh", flush=True)
            return 1
    print("radixmesh up: stopping", flush=True)
    return 0


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
