"""The `radixmesh` command line."""

from __future__ import annotations

import argparse
import logging
import sys

from radixmesh import generate_cli, launcher, make_model, serve
from radixmesh.bench import cli as bench_cli
from radixmesh.offline import cli as offline_cli

COMMANDS = {
    "offline": (offline_cli, "in-process batch inference, JSONL in and out"),
    "make-model": (make_model, "write a random HF-format model directory with a tokenizer"),
    "bench": (bench_cli, "load generator: a standard workload through the mesh or in-process"),
    "serve": (serve, "run one service of the mesh: tokenizer, scheduler, worker or detokenizer"),
    "up": (launcher, "start the whole mesh on this machine, one process per service"),
    "generate": (generate_cli, "stream a completion from a running mesh's gRPC API"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="radixmesh", description=__doc__)
    parser.add_argument("--log-level", default="warning",
                        choices=("debug", "info", "warning", "error"))
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_cli_args(sub)
        sub.set_defaults(run=module.run_cli)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
