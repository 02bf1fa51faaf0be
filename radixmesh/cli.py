"""The `radixmesh` command line."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module with add_cli_args/run_cli, help). Modules are imported only when their
# command runs: some pull in torch and transformers, which would tax every other command.
COMMANDS = {
    "up": ("radixmesh.launcher", "start the whole mesh on this machine, one process per service"),
    "generate": ("radixmesh.generate_cli", "stream a completion from a running mesh's gRPC API"),
    "serve": ("radixmesh.serve",
              "run one service of the mesh: tokenizer, scheduler, worker or detokenizer"),
    "offline": ("radixmesh.offline.cli", "in-process batch inference, JSONL in and out"),
    "bench": ("radixmesh.bench.cli",
              "load generator: a standard workload through the mesh or in-process"),
    "make-model": ("radixmesh.make_model",
                   "write a random HF-format model directory with a tokenizer"),
    "health": ("radixmesh.health_cli", "exit 0 if a service reports SERVING over gRPC health"),
    "check-env": ("radixmesh.check_env", "versions, GPUs and what is missing for which flag"),
    "conformance": ("radixmesh.conformance.cli", "check a service against its internal contract"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixmesh", description=__doc__)
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"))
    commands = parser.add_subparsers(dest="command", required=True)
    chosen = next((arg for arg in argv if arg in COMMANDS), None)
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_cli_args(sub)
            sub.set_defaults(run=module.run_cli)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
