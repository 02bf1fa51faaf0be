"""The result JSON of a run: what ran, where, at which commit, with which exact command.

Files are named `<workload>-<path>-<device slug>-<UTC date>.json` in `load-tests/results/` by
default, next to the results recorded before, so a figure can always be traced to its run.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RESULTS_DIR = REPO_ROOT / "load-tests" / "results"


@dataclass(frozen=True, slots=True)
class Device:
    label: str  # "NVIDIA H100 80GB HBM3", "AMD EPYC CPU, 2 cores"
    slug: str   # for file names: "cpu", "nvidia-h100-80gb-hbm3"


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unknown"


def cpu_device() -> Device:
    """The CPU model and the cores this process may run on."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Device(f"{model} CPU, {cores} cores", "cpu")


def local_device(use_cuda: bool) -> Device:
    """The GPU this process computes on when `use_cuda`, else the CPU."""
    if use_cuda:
        import torch  # here only: the rest of this module is plain bookkeeping

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            return Device(name, slugify(name))
    return cpu_device()


def labelled_device(label: str) -> Device:
    """A device named on the command line (the mesh's machine, which the client cannot see)."""
    return Device(label, "cpu" if "cpu" in label.lower() else slugify(label))


def mesh_device(label: str | None) -> Device:
    """The device a mesh run records: the one named on the command line, else this machine's
    CPU (the client computes nothing; the label is how a GPU server gets on the record)."""
    return labelled_device(label) if label else local_device(use_cuda=False)


def rounded(values: object, digits: int = 4) -> object:
    """`values` with every float rounded, inside dicts and lists too (per-round figures)."""
    if isinstance(values, float):
        return round(values, digits)
    if isinstance(values, dict):
        return {key: rounded(value, digits) for key, value in values.items()}
    if isinstance(values, list):
        return [rounded(value, digits) for value in values]
    return values


def git_commit(repo: Path = REPO_ROOT) -> str:
    """Short HEAD, with "-dirty" when tracked files differ from it; "unknown" outside git.
    `RADIXMESH_COMMIT` overrides it: a machine running an installed wheel has no checkout."""
    if os.environ.get("RADIXMESH_COMMIT"):
        return os.environ["RADIXMESH_COMMIT"]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def command_line(argv: list[str]) -> str:
    """The command as typed. `bench` only runs as a subcommand of `radixmesh`, so the program
    is named `radixmesh` whether it was started by its script or by `python -m`."""
    return shlex.join(["radixmesh", *argv[1:]])


def build_result(workload: str, path: str, device: Device, argv: list[str],
                 metrics: dict, **extra: object) -> dict:
    """The result document; `extra` holds the run's settings (model, scale, rate, ...)."""
    now = datetime.datetime.now(datetime.UTC)
    return {"workload": workload, "path": path, "device": device.label,
            "commit": git_commit(), "command": command_line(argv),
            "date": now.isoformat(timespec="seconds"), **extra, "metrics": metrics}


def write_result(result: dict, output_dir: Path, device: Device) -> Path:
    """Writes `result` under a name no earlier run took; returns the file."""
    stamp = datetime.datetime.fromisoformat(result["date"]).strftime("%Y%m%d-%H%M%S")
    stem = f"{result['workload']}-{result['path']}-{device.slug}-{stamp}"
    return _write_new(result, output_dir, stem)


def write_record(record: dict, name: str, output_dir: Path, argv: list[str],
                 commit: str | None = None) -> Path:
    """A load-tests script's record, stamped with the commit (`commit`: of what it measured,
    where that is not this checkout), the date and the command as typed (`python` and
    `argv`), written as `NAME-<date>.json` in `output_dir`; returns the file."""
    now = datetime.datetime.now().astimezone()
    stamped = {**record, "commit": commit or git_commit(),
               "date": now.isoformat(timespec="seconds"),
               "command": shlex.join(["python", *argv])}
    return _write_new(stamped, output_dir, f"{name}-{now.strftime('%Y%m%d-%H%M%S')}")


def _write_new(document: dict, output_dir: Path, stem: str) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    out, n = output_dir / f"{stem}.json", 1
    while out.exists():
        n += 1
        out = output_dir / f"{stem}-{n}.json"
    out.write_text(json.dumps(document, indent=2) + "\n")
    return out
