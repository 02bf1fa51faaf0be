"""A/B of two radixmesh installs on this CPU: the same workloads, alternated, medians kept.

Each install is a Python interpreter whose `radixmesh` is the version to measure (e.g. a
venv over a `git worktree` of the old commit). For every round and install in turn it starts
`radixmesh up` on free ports (null worker, then the tiny model), runs `radixmesh bench`
against it, stops it, and reads the result JSON. Run it from a directory outside any
checkout, on an otherwise idle machine:

    python load-tests/cpu/ab_mesh.py --a /work/venv-before/bin/python --b python3 \
        --rounds 3 --out load-tests/results/seams-ab-cpu.json

The two sides may also be one install with different `radixmesh up` flags, e.g. data
parallelism on the null worker:

    python load-tests/cpu/ab_mesh.py --a python3 --b python3 --b-up-flags "--dp-size 2" \
        --workloads null-worker --rounds 3 --out load-tests/results/dp-null-worker-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from radixmesh.launcher.mesh_plan import pick_free_ports

WORKLOADS = (  # (name, `radixmesh up` flags, `radixmesh bench` flags)
    ("null-worker", ("--worker", "null"), ("--workload", "null-worker")),
    ("sharegpt-like-200", ("--worker", "model"),
     ("--workload", "sharegpt-like", "--num-prompts", "200")),
)


def run_once(python: str, up_flags: tuple[str, ...], bench_flags: tuple[str, ...]) -> float:
    http_port, grpc_port = pick_free_ports(2)
    up = subprocess.Popen([python, "-P", "-m", "radixmesh.cli", "up", "--port", str(http_port),
                           "--grpc-port", str(grpc_port), *up_flags],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in up.stdout:
            if line.startswith("Press Ctrl-C"):
                break
        else:
            raise RuntimeError(f"{python}: radixmesh up exited ({up.wait()})")
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([python, "-P", "-m", "radixmesh.cli", "bench", *bench_flags,
                            "--server", f"127.0.0.1:{grpc_port}", "--no-progress",
                            "--output-dir", out], check=True, stdout=subprocess.DEVNULL)
            (result,) = Path(out).glob("*.json")
            return json.loads(result.read_text())["metrics"]["output_throughput"]
    finally:
        up.terminate()
        up.wait(30)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def commit_of(python: str) -> str:
    code = "import radixmesh, pathlib; print(pathlib.Path(radixmesh.__file__).parents[1])"
    root = subprocess.run([python, "-P", "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()
    return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", required=True, help="python of install A (the baseline)")
    parser.add_argument("--b", required=True, help="python of install B (the change)")
    parser.add_argument("--a-up-flags", default="", help="more `radixmesh up` flags for A")
    parser.add_argument("--b-up-flags", default="", help="more `radixmesh up` flags for B")
    parser.add_argument("--workloads", nargs="+", default=[name for name, _, _ in WORKLOADS],
                        choices=[name for name, _, _ in WORKLOADS])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    installs = {"a": (args.a, tuple(shlex.split(args.a_up_flags))),
                "b": (args.b, tuple(shlex.split(args.b_up_flags)))}
    workloads = [workload for workload in WORKLOADS if workload[0] in args.workloads]
    runs: dict[str, dict[str, list[float]]] = {w[0]: {"a": [], "b": []} for w in workloads}
    for round_index in range(args.rounds):
        for name, up_flags, bench_flags in workloads:
            for which, (python, extra_flags) in installs.items():
                figure = run_once(python, (*up_flags, *extra_flags), bench_flags)
                runs[name][which].append(round(figure, 1))
                print(f"round {round_index + 1} {name} {which}: {figure:.1f} out tok/s",
                      flush=True)
    summary = {name: {"a_median": statistics.median(r["a"]), "b_median": statistics.median(r["b"]),
                      "b_over_a": round(statistics.median(r["b"]) / statistics.median(r["a"]), 3),
                      "a_runs": r["a"], "b_runs": r["b"]} for name, r in runs.items()}
    record = {"what": "radixmesh bench through `radixmesh up` on the tiny CPU model, A/B "
                      "alternated per round; output tok/s", "device": cpu_name(),
              "cpu_count": os.cpu_count(),
              "a_commit": commit_of(args.a), "b_commit": commit_of(args.b),
              "a_up_flags": args.a_up_flags, "b_up_flags": args.b_up_flags,
              "command": "python load-tests/cpu/ab_mesh.py " + " ".join(
                  f"--{k} {shlex.quote(str(v))}" for k, v in (
                      ("a", args.a), ("b", args.b), ("a-up-flags", args.a_up_flags),
                      ("b-up-flags", args.b_up_flags), ("rounds", args.rounds),
                      ("out", args.out)) if v != "") + " --workloads " + " ".join(
                          args.workloads),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workloads": summary}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
