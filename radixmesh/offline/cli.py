"""The `radixmesh offline` subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radixmesh.engine import Engine, add_engine_arguments, engine_configs_from_args
from radixmesh.offline.demo import DEMO_REQUESTS
from radixmesh.offline.runner import parse_lines, run_offline


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=None,
                        help="JSONL of requests (default: a few built-in demo prompts)")
    parser.add_argument("--output", default="-", help="JSONL of results (default: stdout)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_engine_arguments(parser)


def run_cli(args: argparse.Namespace) -> int:
    if args.input is None:
        bodies = list(DEMO_REQUESTS)
    else:
        with args.input.open() as lines:
            bodies = parse_lines(lines)
    engine = Engine(*engine_configs_from_args(args))
    records, summary = run_offline(engine, bodies, progress=not args.no_progress)
    output = sys.stdout if args.output == "-" else open(args.output, "w")
    try:
        for record in records:
            output.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if output is not sys.stdout:
            output.close()
    for line in summary.lines():
        print(line, file=sys.stderr)
    return 0
