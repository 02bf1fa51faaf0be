"""`radixmesh check-env`: what this machine has, for bug reports and for choosing flags.

Versions of Python, the packages radixmesh uses, CUDA (torch's runtime, the driver), the GPUs
(name, memory, compute capability), the external tools (redis-server, docker), and a list of
what is missing and which flag or feature that costs. Cheap by design: versions come from
package metadata, torch is imported only to ask about CUDA, and no model is loaded.
Plain text by default, `--json` for machines.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

# (shown name, distributions that provide it: the first one installed wins)
PACKAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("radixmesh", ("radixmesh",)),
    ("torch", ("torch",)),
    ("triton", ("triton", "pytorch-triton")),
    ("flashinfer", ("flashinfer-python", "flashinfer")),
    ("grpcio", ("grpcio",)),
    ("protobuf", ("protobuf",)),
    ("transformers", ("transformers",)),
    ("tokenizers", ("tokenizers",)),
    ("safetensors", ("safetensors",)),
    ("huggingface_hub", ("huggingface-hub", "huggingface_hub")),
    ("numpy", ("numpy",)),
    ("opentelemetry-sdk", ("opentelemetry-sdk",)),
    ("opentelemetry-exporter-otlp", ("opentelemetry-exporter-otlp-proto-grpc",)),
    ("prometheus-client", ("prometheus-client", "prometheus_client")),
    ("uvloop", ("uvloop",)),
    ("redis", ("redis",)),
)
# (shown name, command printing its version)
TOOLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("redis-server", ("redis-server", "--version")),
    ("docker", ("docker", "--version")),
    ("nvcc", ("nvcc", "--version")),
    ("g++", ("g++", "--version")),  # what inductor compiles CPU graphs with
)
# Environment variables that change what radixmesh does; secrets are shown as set/unset only.
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "RADIXMESH_HOME", "HF_HOME", "HF_HUB_CACHE",
            "HF_HUB_OFFLINE", "HF_ENDPOINT")
SECRET_ENV_VARS = ("HF_TOKEN",)
FP8_CAPABILITY = (8, 9)  # Ada and newer have FP8 tensor cores


@dataclass
class Gpu:
    index: int
    name: str
    memory_gib: float
    compute_capability: str
    fp8_gemm: bool


@dataclass
class Report:
    python: str
    platform: str
    packages: dict[str, str | None]
    cuda: dict[str, str | None]
    gpus: list[Gpu] = field(default_factory=list)
    tools: dict[str, str | None] = field(default_factory=dict)
    environment: dict[str, str | None] = field(default_factory=dict)
    missing: list[dict[str, str]] = field(default_factory=list)


def package_version(distributions: tuple[str, ...]) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def tool_version(command: tuple[str, ...]) -> str | None:
    """The tool's first version line, or None when it is not on PATH (or does not answer)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "found, but did not report a version"
    lines = [line.strip() for line in (done.stdout or done.stderr).splitlines() if line.strip()]
    return lines[-1] if command[0] == "nvcc" and lines else (lines[0] if lines else "found")


def nvidia_driver() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(
            ("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"),
            capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    versions = sorted(set(done.stdout.split()))
    return ", ".join(versions) or None


def cuda_and_gpus() -> tuple[dict[str, str | None], list[Gpu]]:
    """torch's CUDA runtime, cuDNN, the driver, and each visible GPU."""
    cuda: dict[str, str | None] = {"torch_cuda_runtime": None, "cudnn": None,
                                   "driver": nvidia_driver(), "available": "no"}
    if importlib.util.find_spec("torch") is None:
        return cuda, []
    import torch

    cuda["torch_cuda_runtime"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    cuda["cudnn"] = str(cudnn) if cudnn else None
    if not torch.cuda.is_available():
        return cuda, []
    cuda["available"] = "yes"
    gpus = []
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        capability = (props.major, props.minor)
        gpus.append(Gpu(index, props.name, round(props.total_memory / 2**30, 1),
                        f"{props.major}.{props.minor}", capability >= FP8_CAPABILITY))
    return cuda, gpus


def environment() -> dict[str, str | None]:
    values: dict[str, str | None] = {name: os.environ.get(name) for name in ENV_VARS}
    values.update({name: "set" if os.environ.get(name) else None for name in SECRET_ENV_VARS})
    return values


def missing_features(report: Report) -> list[dict[str, str]]:
    """What is absent, and which flag or feature that costs (empty: nothing is missing)."""
    packages, tools = report.packages, report.tools
    has_cuda = bool(report.gpus)
    rules = [
        (packages["torch"] is None, "torch", "the worker (every model flag)"),
        (packages["torch"] is not None and not has_cuda, "a CUDA device",
         "--device cuda, CUDA graphs, --attention-backend triton/flashinfer, "
         "--sampling-backend flashinfer and the fused Triton kernels: the worker runs on "
         "the CPU"),
        (has_cuda and packages["triton"] is None, "triton",
         "--attention-backend triton, --enable-torch-compile and the fused "
         "norm/RoPE/activation kernels"),
        (packages["flashinfer"] is None, "flashinfer",
         "--attention-backend flashinfer (auto picks triton or torch instead) and "
         "--sampling-backend flashinfer (auto samples with pytorch instead)"),
        (not any(gpu.fp8_gemm for gpu in report.gpus), "a GPU of compute capability 8.9+",
         "--quantization fp8 runs dequantized GEMMs (FP8 storage, no FP8 tensor cores)"),
        (packages["torch"] is not None and not has_cuda and tools.get("g++") is None,
         "g++ (a C++ compiler)", "--enable-torch-compile on the CPU (inductor builds C++)"),
        (packages["huggingface_hub"] is None, "huggingface_hub",
         "--model-path ORG/NAME (hub ids); local directories still load"),
        (packages["opentelemetry-sdk"] is None or packages["opentelemetry-exporter-otlp"] is None,
         "opentelemetry-sdk and its OTLP exporter", "--enable-trace, --otlp-traces-endpoint"),
        (packages["redis"] is None or tools["redis-server"] is None,
         "redis (Python client) and redis-server",
         "the Redis page index shared across meshes (cross-node workload) and its tests"),
        (tools["docker"] is None, "docker",
         "`docker compose` deployment (compose/); compose/run_without_docker.py runs it without"),
    ]
    return [{"missing": what, "affects": affects} for absent, what, affects in rules if absent]


def collect() -> Report:
    cuda, gpus = cuda_and_gpus()
    report = Report(
        python=f"{platform.python_version()} ({platform.python_implementation()}, "
               f"{sys.executable})",
        platform=platform.platform(),
        packages={name: package_version(dists) for name, dists in PACKAGES},
        cuda=cuda, gpus=gpus,
        tools={name: tool_version(command) for name, command in TOOLS},
        environment=environment())
    report.missing = missing_features(report)
    return report


def render_text(report: Report) -> str:
    def rows(values: dict[str, Any], absent: str) -> list[str]:
        width = max(map(len, values), default=0)
        return [f"  {name:<{width}}  {value if value is not None else absent}"
                for name, value in values.items()]

    lines = ["radixmesh check-env", f"Python    {report.python}",
             f"Platform  {report.platform}", "Packages", *rows(report.packages, "not installed"),
             "CUDA", *rows(report.cuda, "none"), "GPUs"]
    lines += [f"  {gpu.index}  {gpu.name}  {gpu.memory_gib} GiB  compute capability "
              f"{gpu.compute_capability}  FP8 GEMM: {'yes' if gpu.fp8_gemm else 'no'}"
              for gpu in report.gpus] or ["  none"]
    lines += ["Tools", *rows(report.tools, "not found"),
              "Environment", *rows(report.environment, "unset"),
              "Missing, and what it costs"]
    lines += [f"  - {item['missing']}: {item['affects']}" for item in report.missing] \
        or ["  nothing"]
    return "\n".join(lines)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run_cli(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(asdict(report), indent=2) if args.json else render_text(report))
    return 0
