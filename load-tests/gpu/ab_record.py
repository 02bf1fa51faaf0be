"""Turns what alternate.sh brought back into one A/B record for load-tests/results/.

    python load-tests/gpu/ab_record.py --what "..." --command "..." --out FILE ALTERNATE_DIR...

Each ALTERNATE_DIR is an unpacked alternate.tgz (arms as NN-ARM folders, in the order they
ran; several dirs from consecutive calls of one lease continue the order). The record holds
every arm's figures in order, the medians per arm and workload, each arm's ratio to the
first arm, the GPU (name and UUID, from gpu.txt) and the server's settings as its logs said
them (KV pool, max running requests, chunk size), so the comparison can be checked later.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import statistics
import tarfile
from collections import defaultdict
from pathlib import Path

FIGURES = ("output_throughput", "median_itl_ms", "median_ttft_ms", "mean_ttft_ms")
SETTINGS = re.compile(r"max_total_num_tokens=(\d+), chunked_prefill_size=(-?\d+), "
                      r"max_running_requests=(\d+)")
# mini-sglang's (a `peer` arm); the rest of its settings are minisgl_bench.py's constants.
PEER_KV = re.compile(r"Allocating (\d+) tokens for KV cache")
PEER_SETTINGS = {"max_running_requests": 1024, "max_extend_tokens": 16384}


def server_settings(arm_dir: Path) -> dict | None:
    logs = arm_dir / "logs.tgz"
    if not logs.exists():
        return None
    with tarfile.open(logs) as archive:
        for member in archive.getmembers():
            if not member.name.endswith(".log") or "server-" not in member.name:
                continue
            text = io.TextIOWrapper(archive.extractfile(member), errors="replace").read()
            match = SETTINGS.search(text)
            if match:
                tokens, chunk, running = map(int, match.groups())
                return {"kv_pool_tokens": tokens, "chunked_prefill_size": chunk,
                        "max_running_requests": running}
            match = PEER_KV.search(text)
            if match:
                return {"kv_pool_tokens": int(match.group(1)), **PEER_SETTINGS}
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--what", required=True)
    parser.add_argument("--command", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs, by_arm, gpu = [], defaultdict(lambda: defaultdict(list)), None
    for directory in args.dirs:
        gpu = gpu or next((p.read_text().strip() for p in directory.glob("*/gpu.txt")), None)
        for arm_dir in sorted(p for p in directory.iterdir() if p.is_dir()):
            arm = arm_dir.name.split("-", 1)[1]
            for path in sorted(arm_dir.glob("*.json")):
                result = json.loads(path.read_text())
                figures = {k: result["metrics"][k] for k in FIGURES if k in result["metrics"]}
                runs.append({"order": len(runs) + 1, "arm": arm, "workload": result["workload"],
                             "commit": result.get("commit"), "file": path.name,
                             "server": server_settings(arm_dir), **figures})
                for key, value in figures.items():
                    by_arm[(arm, result["workload"])][key].append(value)
    medians = {f"{arm} {workload}": {k: round(statistics.median(v), 4) for k, v in fig.items()}
               | {"n": len(next(iter(fig.values())))}
               for (arm, workload), fig in by_arm.items()}
    reference = runs[0]["arm"]
    ratios = {}
    for key, figures in medians.items():
        arm, workload = key.split(" ", 1)
        base = medians.get(f"{reference} {workload}")
        if arm != reference and base:
            ratios[f"{arm} / {reference} {workload}"] = {
                k: round(figures[k] / base[k], 4) for k in FIGURES if k in figures and base[k]}
    commits = {run["arm"]: run["commit"] for run in runs}
    record = {"what": args.what, "device": gpu, "commit": commits, "command": args.command,
              "runs": runs,
              "medians": medians, "ratios_to_first_arm": ratios}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"medians": medians, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
