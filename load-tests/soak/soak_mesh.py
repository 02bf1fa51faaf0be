"""The soak's `radixmesh up`: started on free ports, its output followed (every exit and
restart it reports is counted), and stopped with Ctrl-C at the end."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from radixmesh.launcher.free_ports import pick_free_ports

STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
_EXIT = re.compile(r"radixmesh up: the (\w+) (?:was killed by (\w+)|exited with (status -?\d+))")
_RESTARTED = re.compile(r"radixmesh up: restarted the (\w+)")
_ENDPOINT = re.compile(r"^\s+(OpenAI HTTP|gRPC)\s{2,}(\S+)")


@dataclass
class Mesh:
    process: subprocess.Popen
    model: str
    http_url: str = ""
    grpc_address: str = ""
    context_len: int = 2048
    hicache_metrics_url: str = ""  # with --with-redis: the page index's counters
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def follow(self, log: IO[str] | None) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            if log is not None:
                log.write(line)
                log.flush()
            if match := _ENDPOINT.match(line):
                name, where = match.groups()
                if name == "gRPC":
                    self.grpc_address = where
                else:
                    self.http_url = where.removesuffix("/v1")
            if line.startswith("Press Ctrl-C"):
                self.ready.set()
        self.ready.set()  # `up` ended: whoever waits finds out

    def finish(self) -> dict:
        """Stops `up` (Ctrl-C) and says what it did during the run."""
        stayed_up = self.process.poll() is None
        self.process.send_signal(signal.SIGINT)
        try:
            status = self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        exits: dict[str, Counter] = {}
        restarts: Counter = Counter()
        for line in self.lines:
            if match := _EXIT.search(line):
                name, signame, exit_status = match.groups()
                exits.setdefault(name, Counter())[signame or exit_status] += 1
            elif match := _RESTARTED.search(line):
                restarts[match.group(1)] += 1
        gave_up = [line.strip() for line in self.lines if "stopping the mesh" in line]
        return {"stayed_up": stayed_up, "exit_status": status,
                "exits": {name: dict(counts) for name, counts in sorted(exits.items())},
                "restarts": dict(sorted(restarts.items())),
                "stopped_the_mesh": gave_up[0] if gave_up else None}


@contextlib.contextmanager
def start_mesh(args: argparse.Namespace, redis_url: str | None = None) -> Iterator[Mesh]:
    """`up` on free ports; with `redis_url`, the hierarchical cache on (L3 in a temporary
    directory) and its page index in that Redis."""
    with contextlib.ExitStack() as stack:
        model_path = args.model_path or _tiny_model(stack)
        # --max-restarts 0: the soak kills services on purpose, often, and would otherwise
        # trip the crash-loop limit (which tests/launcher/ tests on its own).
        http_port, grpc_port, metrics_port = pick_free_ports(3)
        argv = [sys.executable, "-P", "-m", "radixmesh.cli", "up", "--worker", args.worker,
                "--model-path", str(model_path), "--port", str(http_port),
                "--grpc-port", str(grpc_port), "--max-restarts", "0",
                *(("--device", "cpu") if args.worker == "model" else ())]
        if redis_url is not None:
            l3_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-l3-"))
            argv += ["--enable-hierarchical-cache", "--hicache-storage-backend", "file",
                     "--hicache-storage-dir", l3_dir, "--hicache-redis-url", redis_url,
                     "--node-id", "soak", "--hicache-metrics-port", str(metrics_port),
                     # The soak's prompts are short: look them up in L3 (prefetch) anyway.
                     "--hicache-prefetch-threshold", "8"]
        log = stack.enter_context(open(args.log_file, "w")) if args.log_file else None
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace")
        mesh = Mesh(process, Path(model_path).name)
        if redis_url is not None:
            mesh.hicache_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        threading.Thread(target=mesh.follow, args=(log,), daemon=True).start()
        try:
            if not mesh.ready.wait(STARTUP_TIMEOUT_S) or process.poll() is not None:
                raise RuntimeError("radixmesh up did not come up:\n" + "".join(mesh.lines))
            mesh.context_len = _context_len(mesh.http_url) or mesh.context_len
            yield mesh
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _tiny_model(stack: contextlib.ExitStack) -> Path:
    from radixmesh.make_model import make_model

    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-model-"))
    return make_model(Path(folder) / "tiny-llama")


def _context_len(http_url: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        with urllib.request.urlopen(f"{http_url}/v1/models", timeout=5) as reply:
            return int(json.load(reply)["data"][0]["max_model_len"]) or None
    return None


def redis_applicability() -> str:
    """Why the `redis-down` fault is not injected without --with-redis. Redis holds the
    hicache service's page index (--hicache-redis-url), which only pages a KV-holding worker
    backs up ever reach: the default null-worker mesh has none, so Redis going down could
    change nothing it measures. `--with-redis` runs the tiny model with the index instead."""
    from radixmesh.launcher import add_cli_args

    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    flags = [flag for action in parser._actions for flag in action.option_strings
             if "redis" in flag]
    if flags:
        return (f"not applicable: `up` takes {', '.join(flags)}, but the null worker holds no "
                "KV, so no page reaches the Redis index (see --with-redis)")
    return "not applicable: no service of the mesh uses Redis (`up` takes no Redis flag)"
