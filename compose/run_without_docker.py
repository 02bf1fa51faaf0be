"""Runs a compose file's radixmesh services as plain processes on this host, with the same
flags: how the GPU variant's launch command is checked on a GPU machine that has no Docker.

    python3 -P compose/run_without_docker.py compose/compose.yaml --add-hosts \\
        --then 'radixmesh generate "Hello" --server 127.0.0.1:30001'

Each service's `command` runs with `${VAR:-default}` filled from the environment, in
`depends_on` order, each started once the ones it depends on pass their own healthcheck
(the file's `radixmesh health ...`, run here). Services of a third-party image (Redis, Jaeger)
are skipped, and so is what only a container has (ipc, shm_size, volumes): paths such as
/models must exist on the host (a symlink will do). With --add-hosts, the service names go
into /etc/hosts as 127.0.0.1, as compose.ci.yaml does for containers. `--then CMD` runs a
shell command once everything is healthy, then stops the services (SIGTERM, in reverse
order) and exits with its status; without it, the services run until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}")
# `radixmesh` in a command is the installed CLI; run through this interpreter, so an install
# into PYTHONPATH (no console script on PATH) works as well.
CLI = [sys.executable, "-P", "-m", "radixmesh.cli"]


def interpolate(value: str) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`."""
    def fill(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        return found if found not in (None, "") else (default or "")
    return VARIABLE.sub(fill, value)


def argv_of(command: list[str]) -> list[str]:
    argv = [interpolate(str(part)) for part in command]
    return [*CLI, *argv[1:]] if argv and argv[0] == "radixmesh" else argv


def start_order(services: dict[str, dict]) -> list[str]:
    """The radixmesh services, each after everything it depends on."""
    ordered: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in ordered or name not in services:
            return
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join((*path, name))}")
        for dependency in services[name].get("depends_on", {}):
            visit(dependency, (*path, name))
        ordered.append(name)

    for name in services:
        visit(name, ())
    return ordered


def healthy(service: dict) -> bool:
    test = service.get("healthcheck", {}).get("test")
    if not test:
        return True
    argv = argv_of(test[1:]) if test[0] == "CMD" else ["sh", "-c", interpolate(test[1])]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def add_hosts(names: list[str]) -> None:
    hosts = Path("/etc/hosts")
    known = hosts.read_text().split()
    missing = [name for name in names if name not in known]
    if missing:
        with hosts.open("a") as file:
            file.write(f"127.0.0.1 {' '.join(missing)}  # compose/run_without_docker.py\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("compose_file", type=Path)
    parser.add_argument("--add-hosts", action="store_true",
                        help="map the file's service names to 127.0.0.1 in /etc/hosts")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds each service may take to become healthy")
    parser.add_argument("--log-dir", type=Path, default=Path("."),
                        help="each service's output goes to LOG_DIR/SERVICE.log")
    parser.add_argument("--then", default=None, help="shell command to run once all are up")
    args = parser.parse_args(argv)

    everything = yaml.safe_load(args.compose_file.read_text())["services"]
    services = {name: spec for name, spec in everything.items()
                if spec.get("command") and str(spec["command"][0]) == "radixmesh"
                and "serve" in spec["command"]}
    skipped = sorted(set(everything) - set(services))
    print(f"running {', '.join(start_order(services))}; skipped (not radixmesh services): "
          f"{', '.join(skipped) or '-'}", flush=True)
    if args.add_hosts:
        add_hosts(sorted(everything))
    args.log_dir.mkdir(parents=True, exist_ok=True)
    running: list[tuple[str, subprocess.Popen]] = []
    try:
        for name in start_order(services):
            spec = services[name]
            env = {**os.environ, **{key: interpolate(str(value)) for key, value
                                    in (spec.get("environment") or {}).items()}}
            argv = argv_of(spec["command"])
            print(f"== {name}: {shlex.join(argv)}", flush=True)
            log = (args.log_dir / f"{name}.log").open("w")
            running.append((name, subprocess.Popen(argv, env=env, stdout=log,
                                                   stderr=subprocess.STDOUT)))
            started, deadline = time.monotonic(), time.monotonic() + args.timeout
            while not healthy(spec):
                if running[-1][1].poll() is not None or time.monotonic() > deadline:
                    tail = (args.log_dir / f"{name}.log").read_text()[-3000:]
                    print(f"!! {name} not healthy (exit {running[-1][1].poll()}):\n{tail}")
                    return 1
                time.sleep(1.0)
            print(f"== {name} healthy after {time.monotonic() - started:.0f}s", flush=True)
        if args.then is not None:
            return subprocess.run(args.then, shell=True).returncode
        print("all healthy; Ctrl-C stops them", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stops them through `finally`
        while all(process.poll() is None for _, process in running):
            time.sleep(1.0)
        print("!! a service exited:", [name for name, process in running if process.poll()])
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for name, process in reversed(running):
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
            print(f"== {name} stopped (exit {process.returncode})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
