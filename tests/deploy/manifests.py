"""The Kubernetes manifests as the tests see them: rendered by `kubectl kustomize` (every
kubectl named in $RADIXMESH_KUBECTL, else the one on PATH) and read back as plain objects.

CI's kubectl is Debian bookworm's `kubernetes-client` (1.20, with kustomize v2.0.3); a
developer's is usually current. Set RADIXMESH_KUBECTL=/usr/bin/kubectl:/tmp/old/kubectl to
render with both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
# Native gRPC probes are GA from 1.27; the newest schema kubernetes-validate bundles is added.
OLDEST_SUPPORTED = "1.27.0"


def kubectls() -> list[str]:
    """Every kubectl to render with ([] when none is installed)."""
    named = os.environ.get("RADIXMESH_KUBECTL")
    if named:
        return [path for path in named.split(os.pathsep) if path]
    found = shutil.which("kubectl")
    return [found] if found else []


def render(kubectl: str, overlay: str) -> list[dict]:
    """`kubectl kustomize deploy/kubernetes/overlays/OVERLAY`, parsed."""
    result = subprocess.run([kubectl, "kustomize", str(KUBERNETES_DIR / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{kubectl} kustomize {overlay}: {result.stderr}"
    return [item for item in yaml.safe_load_all(result.stdout) if item]


@dataclass(frozen=True)
class Rendered:
    """One overlay's objects, looked up by kind and name."""

    objects: list[dict]

    def get(self, kind: str, name: str) -> dict:
        for item in self.objects:
            if item["kind"] == kind and item["metadata"]["name"] == name:
                return item
        raise KeyError(f"no {kind} {name!r} rendered")

    def of_kind(self, kind: str) -> list[dict]:
        return [item for item in self.objects if item["kind"] == kind]

    def config(self) -> dict[str, str]:
        return self.get("ConfigMap", "radixmesh-config")["data"]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> dict[str, dict]:
    return {container["name"]: container for container in pod_spec(workload)["containers"]}


def flag(command: list[str], name: str) -> str:
    """The value following `name` in a container's command."""
    return command[command.index(name) + 1]
