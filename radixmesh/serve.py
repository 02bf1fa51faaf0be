"""`radixmesh serve tokenizer|scheduler|worker|detokenizer|hicache|router`: one service, alone.

Each service takes its own flags (its config dataclass's fields) and runs until SIGINT or
SIGTERM, which stop it cleanly (exit status 0); a failure exits with status 1. Service
modules are imported only for the service being run, so a detokenizer never loads torch.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import signal
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from radixmesh.services.detokenizer.config import DetokenizerConfig
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.router.config import RouterConfig
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.cli_args import add_config_arguments, config_from_args

logger = logging.getLogger(__name__)

ServiceMain = Coroutine[Any, Any, None]


@dataclass(frozen=True)
class ServiceEntry:
    help: str
    config: type  # its fields are the service's flags
    server: str   # the module whose `serve(config)` runs the service, imported only when run

    def main(self, args: argparse.Namespace) -> ServiceMain:
        return importlib.import_module(self.server).serve(config_from_args(self.config, args))


SERVICES: dict[str, ServiceEntry] = {
    "tokenizer": ServiceEntry("the front door: OpenAI HTTP and the gRPC Generation API",
                              TokenizerConfig, "radixmesh.services.tokenizer.server"),
    "scheduler": ServiceEntry("batches requests into step plans for the worker",
                              SchedulerConfig, "radixmesh.services.scheduler.server"),
    "worker": ServiceEntry("executes step plans: the model, its KV cache and sampling",
                           WorkerConfig, "radixmesh.services.worker.server"),
    "detokenizer": ServiceEntry("turns token batches into text batches, with stop strings",
                                DetokenizerConfig, "radixmesh.services.detokenizer.server"),
    "hicache": ServiceEntry("the hierarchical KV cache: L2 host memory, L3 storage",
                            HiCacheConfig, "radixmesh.services.hicache.server"),
    "router": ServiceEntry("the front door in front of several nodes (meshes): picks a node "
                           "per request, by what it holds and how busy it is",
                           RouterConfig, "radixmesh.services.router.server"),
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    services = parser.add_subparsers(dest="service", required=True, metavar="SERVICE")
    for name, entry in SERVICES.items():
        sub = services.add_parser(name, help=entry.help, description=entry.help)
        add_config_arguments(sub, entry.config)
        sub.set_defaults(service_entry=entry)


def run_cli(args: argparse.Namespace) -> int:
    if getattr(args, "model_path", "") is None:
        # Services only find the default model; making it on first use is the launcher's job.
        from radixmesh.make_model import default_model_path
        args.model_path = str(default_model_path())
    try:
        main = args.service_entry.main(args)
    except ValueError as error:  # a config's __post_init__ rejected a flag
        logger.error("%s", error)
        return 2
    return run_until_signalled(main)


def run_until_signalled(main: ServiceMain) -> int:
    """Runs `main` until it returns, fails (1) or SIGINT/SIGTERM cancels it (0)."""
    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            logger.info("stopped by signal")

    try:
        asyncio.run(runner())
    except KeyboardInterrupt:
        return 130
    except Exception:
        logger.exception("service failed")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m radixmesh.serve SERVICE ...`: the same as `radixmesh serve`, without the
    import time of the other subcommands (torch, transformers), which `radixmesh up` pays
    once per service otherwise."""
    parser = argparse.ArgumentParser(prog="radixmesh serve", description=__doc__)
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"))
    add_cli_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_cli(args)


if __name__ == "__main__":
    sys.exit(main())
