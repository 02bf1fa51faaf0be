"""What the tiling benches share: their flags, and writing a sweep's winners as this GPU's
table (kernels/tuned_configs.py) into the installed package and into --configs-out."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from radixmesh.kernels.tuned_configs import CONFIG_DIR, write_table


def parse_bench_args(description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", default=None, help="every timing, as JSON")
    parser.add_argument("--sweep", action="store_true", help="time every tiling of the grid")
    parser.add_argument("--configs-out", type=Path, default=None,
                        help="also write the swept table here (to commit)")
    parser.add_argument("--commit", default="?", help="the wheel's commit, for the table")
    return parser.parse_args()


def write_tables(kernel: str, best: dict[tuple[int, int], Any], args: argparse.Namespace,
                 command: str) -> None:
    """The winners per [n, k], where the installed kernels read them and in --configs-out."""
    provenance = {"commit": args.commit, "command": command}
    for directory in (CONFIG_DIR, args.configs_out):
        if best and directory is not None:
            print("table:", write_table(kernel, torch.cuda.get_device_name(), best, provenance,
                                        directory))
