"""`radixmesh conformance SERVICE --target HOST:PORT`: checks that a service at HOST:PORT
(any implementation) follows its internal contract; exits 0 only if every check passes."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

from radixmesh.conformance.runner import describe, run_checks

SUITES = ("worker", "detokenizer", "scheduler", "hicache")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", choices=SUITES, help="the contract to check")
    parser.add_argument("--target", help="HOST:PORT of the service under test")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds each call may take (a check gets twice that)")
    parser.add_argument("--list", action="store_true",
                        help="print the checks and what each requires, and exit")


def run_cli(args: argparse.Namespace) -> int:
    # Suites are imported by name so that each stays a plain module: CHECKS and CALLER.
    suite = importlib.import_module(f"radixmesh.conformance.{args.service}")
    if args.list:
        print(describe(suite.CHECKS))
        return 0
    if not args.target:
        print("radixmesh conformance: --target HOST:PORT is required", file=sys.stderr)
        return 2
    return asyncio.run(run_checks(args.target, suite.CHECKS, suite.CALLER, args.timeout,
                                  sys.stdout))
