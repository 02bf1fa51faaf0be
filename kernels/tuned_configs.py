"""Tilings measured on a GPU model, per kernel and weight shape, read from kernels/configs/.

A Triton kernel's best tiling depends on the device and on the weight's [N, K]; guessing it from
the SM count left the few-token FP8 GEMM at 1.3-2.3 TB/s on an H100 where cuBLAS reads bf16 at
3.0 TB/s. The benches' `--sweep` time every tiling on the GPU at hand and write the winners to
`configs/<kernel>-<device>.json`, shipped with the package (as SGLang ships its MoE tunings):

    {"device": "NVIDIA H100 80GB HBM3", "commit": "...", "command": "...",
     "configs": {"6144,4096": {"block_n": 64, "split_k": 2, ...}, ...}}

A shape or a device without an entry keeps the kernel's own default; a table never changes
which tilings are valid, only which one is picked, so a stale table costs speed, not results.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import fields, replace
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

CONFIG_DIR = Path(__file__).parent / "configs"
Tiling = TypeVar("Tiling")

logger = logging.getLogger(__name__)


def device_slug(device_name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (as the result files name devices)."""
    return re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")


def table_path(kernel: str, device_name: str, directory: Path = CONFIG_DIR) -> Path:
    return directory / f"{kernel}-{device_slug(device_name)}.json"


@cache
def _table(kernel: str, device_name: str, directory: Path) -> dict[str, dict[str, Any]]:
    path = table_path(kernel, device_name, directory)
    if not path.exists():
        return {}
    configs = json.loads(path.read_text())["configs"]
    logger.info("%s: tilings for %d weight shapes from %s", kernel, len(configs), path.name)
    return configs


def tuned(kernel: str, device_name: str, n: int, k: int, default: Tiling,
          directory: Path = CONFIG_DIR) -> Tiling:
    """`default` (a frozen dataclass) with the fields the table holds for an [n, k] weight on
    this device; `default` itself where it holds none."""
    entry = _table(kernel, device_name, directory).get(f"{n},{k}")
    if not entry:
        return default
    known = {field.name for field in fields(default)}
    return replace(default, **{key: value for key, value in entry.items() if key in known})


def write_table(kernel: str, device_name: str, configs: dict[tuple[int, int], Any],
                provenance: dict[str, str], directory: Path = CONFIG_DIR) -> Path:
    """Writes the winners of a sweep (a tiling dataclass per [n, k]) where `tuned` reads them."""
    path = table_path(kernel, device_name, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"device": device_name, **provenance,
            "configs": {f"{n},{k}": {field.name: getattr(tiling, field.name)
                                     for field in fields(tiling)}
                        for (n, k), tiling in sorted(configs.items())}}
    path.write_text(json.dumps(body, indent=1) + "\n")
    _table.cache_clear()
    return path
