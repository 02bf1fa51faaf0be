"""A/B of two radixmesh installs on this CPU: the same workloads, alternated, medians kept.

Each install is a Python interpreter whose `radixmesh` is the version to measure (e.g. a
venv over a `git worktree` of the old commit). For every round and install in turn it starts
`radixmesh up` on free ports (null worker, then the tiny model), runs `radixmesh bench`
against it, stops it, and reads the result JSON. Run it from a directory outside any
checkout, on an otherwise idle machine:

    python load-tests/cpu/ab_mesh.py --a /work/venv-before/bin/python --b python3 \
        --rounds 3 --out load-tests/results/seams-ab-cpu.json

With --offline each round also runs each workload on each install's in-process engine
(`radixmesh bench --path offline`), and the record gives each install's mesh/offline ratio.

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

from radixmesh.launcher.free_ports import pick_free_ports

WORKLOADS = (  # (name, `radixmesh up` flags, `radixmesh bench` flags)
    ("null-worker", ("--worker", "null"), ("--workload", "null-worker")),
    ("sharegpt-like-200", ("--worker", "model"),
     ("--workload", "sharegpt-like", "--num-prompts", "200")),
)
SERVICES = ("tokenizer", "scheduler", "worker", "detokenizer", "hicache")


def run_offline(python: str, up_flags: tuple[str, ...], bench_flags: tuple[str, ...]) -> float:
    """The same workload through the in-process engine (`bench --path offline`), with the
    worker flags of `up_flags`: the figure the mesh is measured against."""
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([python, "-P", "-m", "radixmesh.cli", "bench", *bench_flags, *up_flags,
                        "--path", "offline", "--no-progress", "--output-dir", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        (result,) = Path(out).glob("*.json")
        return json.loads(result.read_text())["metrics"]["output_throughput"]


def service_cpu_seconds(parent: int) -> dict[str, float]:
    """CPU seconds (user + system) each service process `radixmesh up` started has used so
    far, by service: where a mesh's time goes, less blurred by other load than its tok/s."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            args = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # it ended meanwhile
            continue
        name = next((arg for arg in args if arg in SERVICES), None)
        if int(fields[1]) == parent and name is not None:
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def run_once(python: str, up_flags: tuple[str, ...],
             bench_flags: tuple[str, ...]) -> tuple[float, dict[str, float]]:
    """Output tok/s through a fresh mesh, and the CPU seconds each service spent meanwhile."""
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
        before = service_cpu_seconds(up.pid)
        with tempfile.TemporaryDirectory() as out:
            subprocess.run([python, "-P", "-m", "radixmesh.cli", "bench", *bench_flags,
                            "--server", f"127.0.0.1:{grpc_port}", "--no-progress",
                            "--output-dir", out], check=True, stdout=subprocess.DEVNULL)
            cpu = {name: round(seconds - before.get(name, 0.0), 2)
                   for name, seconds in service_cpu_seconds(up.pid).items()}
            (result,) = Path(out).glob("*.json")
            return json.loads(result.read_text())["metrics"]["output_throughput"], cpu
    finally:
        up.terminate()
        up.wait(30)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def commit_of(python: str) -> str:
    """The short commit of the checkout `python` runs radixmesh from, "+uncommitted" when its
    tracked files differ from it; where the install is no git checkout (a wheel in
    site-packages, a copied tree), the version it was installed as."""
    code = ("import radixmesh, pathlib, importlib.metadata as m; "
            "print(pathlib.Path(radixmesh.__file__).parents[1]); print(m.version('radixmesh'))")
    root, version = subprocess.run([python, "-P", "-c", code], capture_output=True, text=True,
                                   check=True).stdout.split()
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode != 0:
        return f"{version} (not a git checkout: {root})"
    dirty = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD"]).returncode != 0
    return head.stdout.strip() + ("+uncommitted" if dirty else "")


def summarize(runs: dict[str, list[float]], cpu: dict[str, list[dict[str, float]]]) -> dict:
    """Medians of each side's runs, B over A, each install's mesh over offline, and the
    median CPU seconds of each service through the bench."""
    medians = {side: statistics.median(figures) for side, figures in runs.items()}
    out: dict = {f"{side}_median": median for side, median in medians.items()}
    out["b_over_a"] = round(medians["b"] / medians["a"], 3)
    for side in ("a", "b"):
        if f"{side}_offline" in medians:
            out[f"{side}_mesh_over_offline"] = round(medians[side] / medians[f"{side}_offline"], 3)
        out[f"{side}_cpu_seconds_median"] = {
            name: round(statistics.median(run.get(name, 0.0) for run in cpu[side]), 2)
            for name in SERVICES if any(name in run for run in cpu[side])}
    out.update({f"{side}_runs": figures for side, figures in runs.items()})
    out.update({f"{side}_cpu_seconds_runs": cpu[side] for side in ("a", "b")})
    return out


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
    parser.add_argument("--offline", action="store_true",
                        help="each round also runs each workload offline (the in-process "
                             "engine) on each install, and records mesh/offline")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    installs = {"a": (args.a, tuple(shlex.split(args.a_up_flags))),
                "b": (args.b, tuple(shlex.split(args.b_up_flags)))}
    workloads = [workload for workload in WORKLOADS if workload[0] in args.workloads]
    sides = ("a", "b", "a_offline", "b_offline") if args.offline else ("a", "b")
    runs = {w[0]: {side: [] for side in sides} for w in workloads}
    cpu: dict[str, dict[str, list[dict[str, float]]]] = {w[0]: {"a": [], "b": []}
                                                          for w in workloads}
    for round_index in range(args.rounds):
        for name, up_flags, bench_flags in workloads:
            for side in sides:
                python, extra_flags = installs[side[0]]
                flags = (*up_flags, *extra_flags)
                if side.endswith("offline"):
                    figure = run_offline(python, flags, bench_flags)
                else:
                    figure, seconds = run_once(python, flags, bench_flags)
                    cpu[name][side].append(seconds)
                runs[name][side].append(round(figure, 1))
                print(f"round {round_index + 1} {name} {side}: {figure:.1f} out tok/s",
                      flush=True)
    summary = {name: summarize(r, cpu[name]) for name, r in runs.items()}
    record = {"what": "radixmesh bench through `radixmesh up` on the tiny CPU model, A/B "
                      "alternated per round (and offline, the in-process engine, with "
                      "--offline); output tok/s", "device": "cpu", "cpu": cpu_name(),
              "cpu_count": os.cpu_count(),
              "a_commit": commit_of(args.a), "b_commit": commit_of(args.b),
              "a_up_flags": args.a_up_flags, "b_up_flags": args.b_up_flags,
              "command": "python load-tests/cpu/ab_mesh.py " + " ".join(
                  f"--{k} {shlex.quote(str(v))}" for k, v in (
                      ("a", args.a), ("b", args.b), ("a-up-flags", args.a_up_flags),
                      ("b-up-flags", args.b_up_flags), ("rounds", args.rounds),
                      ("out", args.out)) if v != "") + (" --offline" if args.offline else "")
                         + " --workloads " + " ".join(args.workloads),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workloads": summary}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
