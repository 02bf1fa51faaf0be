"""Runs pods of the rendered manifests as local processes: each container's exact command
and environment, as the kubelet would give them, with only what a single host must change.

- Environment: `value`, the downward API (`metadata.name` is the pod's name), ConfigMap keys
  (from the rendered ConfigMaps, with the overrides a test overlay would make) and optional
  Secret keys (absent: no Secret is rendered); then Kubernetes' `$(VAR)` expansion.
- Addresses, host-network style: a Service name (alone, or after a pod name as in
  radixmesh-node-0.radixmesh-node) and a pod's own 127.0.0.1 / 0.0.0.0 become 127.0.0.1 with
  the local port standing for that pod's containerPort (every pod gets free ports: the
  router and a node both listen on 30000 in the cluster). `--host 0.0.0.0` listens on
  127.0.0.1 only, and so does Redis (`--bind`).
- Paths under a volume's mountPath go to a local folder per pod and volume (preloaded with
  what `contents` gives, e.g. the tiny model); /dev/shm and /tmp stay the host's.
- Init containers are not run: the test preloads what they would make.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.shared.grpc_service import is_serving
from tests.deploy.manifests import Rendered, containers

KEEP_MOUNTS = ("/dev/shm", "/tmp")
HOST_PORT = re.compile(r"(?<![\w.-])((?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+):(\d{1,5})(?!\d)")
VARIABLE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)`: replaced when VAR is defined, kept as is otherwise; `$$` is `$`."""
    def fill(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return VARIABLE.sub(fill, value)


@dataclass
class LocalPod:
    name: str
    workload: dict
    root: Path
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> local port
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def claim_ports(self) -> None:
        """Free local ports for the pod's containerPorts, picked as it starts: a mesh in an
        earlier pod picks its internal ports as it starts, and could take a port promised
        here but not yet bound (CI saw the router lose 23465 that way)."""
        for container in containers(self.workload).values():
            for port in container.get("ports", []):
                (self.ports[port["containerPort"]],) = pick_free_ports(1)

    def container_port(self, port: int | str) -> int:
        """A probe's or a Service's port (a number or a port name) as a containerPort."""
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for container in containers(self.workload).values():
            for declared in container.get("ports", []):
                if declared.get("name") == port:
                    return declared["containerPort"]
        raise KeyError(f"{self.name}: no port named {port!r}")

    def local(self, port: int | str) -> int:
        assert self.ports, f"{self.name} is not started: start the pods a pod names first"
        return self.ports[self.container_port(port)]

    def volume_dir(self, volume: str) -> Path:
        path = self.root / self.name / volume
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, container: str) -> Path:
        return self.root / f"{self.name}.{container}.log"


@dataclass
class LocalCluster:
    rendered: Rendered
    root: Path
    config_overrides: dict[str, str] = field(default_factory=dict)
    contents: dict[str, dict[str, Path]] = field(default_factory=dict)  # volume -> links
    pods: list[LocalPod] = field(default_factory=list)

    def add_pod(self, kind: str, workload_name: str, pod_name: str) -> LocalPod:
        pod = LocalPod(pod_name, self.rendered.get(kind, workload_name), self.root)
        for volume, links in self.contents.items():
            for link, target in links.items():
                (pod.volume_dir(volume) / link).symlink_to(target)
        self.pods.append(pod)
        return pod

    # ---- what each container is given ------------------------------------------------------

    def environment(self, pod: LocalPod, container: dict) -> dict[str, str]:
        config = {**self.rendered.config(), **self.config_overrides}
        env: dict[str, str] = {}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = expand(item.get("value", ""), env)
            elif "fieldRef" in source:
                field_path = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {"metadata.name": pod.name,
                                     "metadata.namespace": "default"}[field_path]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                assert ref["name"] == "radixmesh-config", ref
                env[item["name"]] = config[ref["key"]]
            elif "secretKeyRef" in source:
                assert source["secretKeyRef"].get("optional"), f"required Secret: {item}"
            else:
                raise AssertionError(f"unsupported env source {source}")
        return env

    def localize(self, pod: LocalPod, container: dict, value: str) -> str:
        """Addresses and mounted paths of one argument or variable, made local."""
        for mount in container.get("volumeMounts", []):
            path = mount["mountPath"]
            if path not in KEEP_MOUNTS and (value == path or value.startswith(path + "/")):
                value = str(pod.volume_dir(mount["name"])) + value[len(path):]
        return HOST_PORT.sub(lambda match: self._address(pod, match.group(1),
                                                         int(match.group(2))), value)

    def _address(self, pod: LocalPod, host: str, port: int) -> str:
        if host in ("127.0.0.1", "localhost", "0.0.0.0"):
            return f"127.0.0.1:{pod.ports[port]}" if port in pod.ports else f"{host}:{port}"
        services = {item["metadata"]["name"]: item for item in self.rendered.of_kind("Service")}
        name = next((label for label in host.split(".") if label in services), None)
        assert name is not None, f"{pod.name}: address {host}:{port} names no rendered Service"
        selector = services[name]["spec"]["selector"]
        target = next(other for other in self.pods if selector.items()
                      <= other.workload["spec"]["template"]["metadata"]["labels"].items())
        service_port = next(item for item in services[name]["spec"]["ports"]
                            if item["port"] == port)
        return f"127.0.0.1:{target.local(service_port.get('targetPort', port))}"

    def argv(self, pod: LocalPod, container: dict) -> tuple[list[str], dict[str, str]]:
        env = self.environment(pod, container)
        argv = [expand(part, env) for part in (*container.get("command", []),
                                               *container.get("args", []))]
        argv = [self.localize(pod, container, part) for part in argv]
        for index, part in enumerate(argv[1:], 1):
            if argv[index - 1].endswith("-port") and part.isdigit() and int(part) in pod.ports:
                argv[index] = str(pod.ports[int(part)])
            elif argv[index - 1] == "--host" and part == "0.0.0.0":
                argv[index] = "127.0.0.1"
        env = {name: self.localize(pod, container, value) for name, value in env.items()}
        if argv[:2] == ["radixmesh", "serve"]:  # the installed CLI, without the others' imports
            argv = [sys.executable, "-P", "-m", "radixmesh.serve", *argv[2:]]
        elif argv[0] == "radixmesh":
            argv = [sys.executable, "-P", "-m", "radixmesh.cli", *argv[1:]]
        elif argv[0] == "redis-server":
            argv += ["--bind", "127.0.0.1"]
        return argv, env

    # ---- running -----------------------------------------------------------------------------

    def start(self, pod: LocalPod) -> None:
        """Every container at once, as the kubelet starts them (services retry their peers).
        Start a pod once the pods it names are ready: their local ports are known only then."""
        pod.claim_ports()
        for name, container in containers(pod.workload).items():
            argv, env = self.argv(pod, container)
            with pod.log(name).open("w") as log:
                pod.processes[name] = subprocess.Popen(argv, env={**os.environ, **env},
                                                       stdout=log, stderr=subprocess.STDOUT)

    def ready(self, pod: LocalPod) -> bool:
        """Every container's startup, liveness and readiness probes pass (raises if one of
        its processes has exited)."""
        for name, container in containers(pod.workload).items():
            status = pod.processes[name].poll()
            if status is not None:
                tail = pod.log(name).read_text()[-3000:]
                raise RuntimeError(f"{pod.name}/{name} exited with {status}:\n{tail}")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container and not self._passes(pod, container, container[probe]):
                    return False
        return True

    def _passes(self, pod: LocalPod, container: dict, probe: dict) -> bool:
        if "grpc" in probe:
            return is_serving(f"127.0.0.1:{pod.local(probe['grpc']['port'])}", timeout=1.0)
        if "httpGet" in probe:
            url = f"http://127.0.0.1:{pod.local(probe['httpGet']['port'])}" \
                  f"{probe['httpGet']['path']}"
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False
        # An exec probe (redis-cli ping) would reach the default port: a connect stands in.
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", pod.ports[next(iter(pod.ports))])) == 0

    def stop(self) -> None:
        """SIGTERM to everything, newest pod first, as a deletion would; SIGKILL past 30 s."""
        for pod in reversed(self.pods):
            for process in pod.processes.values():
                if process.poll() is None:
                    process.terminate()
            for process in pod.processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def unsupported_flags(command: list[str]) -> str | None:
    """Why `radixmesh serve ...` would refuse this command today (None: it parses): the
    service or the flags the installed radixmesh does not have yet."""
    from radixmesh.serve import SERVICES
    from radixmesh.shared.cli_args import add_config_arguments

    if command[:2] != ["radixmesh", "serve"]:
        return None
    if command[2] not in SERVICES:
        return f"`radixmesh serve {command[2]}` does not exist yet"
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, SERVICES[command[2]].config)
    known = {option for action in parser._actions for option in action.option_strings}
    unknown = [part for part in command[3:] if part.startswith("--") and part not in known]
    if unknown:
        return f"`radixmesh serve {command[2]}` has no {' '.join(unknown)} yet"
    return None
