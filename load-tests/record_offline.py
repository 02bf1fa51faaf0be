"""Runs the `sharegpt-like` workload through the in-process engine and records the result JSON.

    python load-tests/record_offline.py --num-prompts 1000 [engine flags...]

Writes load-tests/results/<workload>-offline-<device>-<date>.json with the hardware, the commit
and the exact command. (The mesh-side load generator, `radixmesh bench`, comes with the mesh.)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from radixmesh.engine import Engine
from radixmesh.offline.runner import run_offline
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.cli_args import add_config_arguments, config_from_args

sys.path.insert(0, str(Path(__file__).parent))
from offline_input import sharegpt_like  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--scale", type=float, default=1.0)
    add_config_arguments(parser, WorkerConfig)
    add_config_arguments(parser, SchedulerConfig)
    args = parser.parse_args()
    engine = Engine(config_from_args(WorkerConfig, args), config_from_args(SchedulerConfig, args))
    bodies = sharegpt_like(args.num_prompts, engine.info.vocab_size, args.scale)
    _, summary = run_offline(engine, bodies, progress=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    date = datetime.datetime.now(datetime.UTC)
    result = {
        "workload": "sharegpt-like", "path": "offline", "device": device_name(),
        "commit": commit, "command": " ".join(["python", *sys.argv]),
        "date": date.isoformat(timespec="seconds"),
        "model": engine.info.model_id, "num_prompts": args.num_prompts, "scale": args.scale,
        "metrics": {
            "output_throughput": round(summary.output_throughput, 1),
            "total_throughput": round(summary.total_throughput, 1),
            "median_ttft_ms": None, "p99_ttft_ms": None,
            "median_itl_ms": None, "p99_itl_ms": None,
            "cache_hit_rate": round(summary.cache_hit_rate, 4),
            "seconds": round(summary.seconds, 2),
            "output_tokens": summary.output_tokens, "prompt_tokens": summary.prompt_tokens,
            "num_failed": summary.num_failed,
        },
    }
    RESULTS.mkdir(exist_ok=True)
    slug = "gpu" if torch.cuda.is_available() else "cpu"
    out = RESULTS / f"sharegpt-like-offline-{slug}-{date:%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["metrics"]), "->", out)


if __name__ == "__main__":
    main()
