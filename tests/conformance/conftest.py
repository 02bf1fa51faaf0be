"""Fixtures of the conformance tests: the mesh tests' process helpers and tiny model, and a
runner of `radixmesh conformance` as a user runs it (its own process)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

from tests.mesh.conftest import (  # noqa: F401 (fixtures, registered by import)
    mesh_model_path,
    module_services,
    services,
)


@dataclass
class SuiteRun:
    returncode: int
    output: str

    @property
    def failures(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("FAIL ")]

    @property
    def passes(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("PASS ")]


def run_suite(service: str, target: str, timeout: float = 30.0) -> SuiteRun:
    """`radixmesh conformance SERVICE --target TARGET`, its output kept for the assertion."""
    argv = [sys.executable, "-P", "-m", "radixmesh.cli", "conformance", service,
            "--target", target, "--timeout", str(timeout)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20 * timeout)
    return SuiteRun(done.returncode, done.stdout + done.stderr)
