"""The parallelism tests' shared fixtures."""

import threading

import pytest

from radixmesh.services.worker.null_worker import NullWorker
from tests.mesh.conftest import mesh_model_path as mesh_model_path  # the session's tiny model

GATE_TIMEOUT_S = 60.0  # a gate left closed by a failed test opens by itself


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Open (set) unless a test closes it; every null worker's step waits for it."""
    gate = threading.Event()
    gate.set()
    execute = NullWorker.execute

    def gated_execute(self, plan):
        gate.wait(GATE_TIMEOUT_S)
        return execute(self, plan)

    monkeypatch.setattr(NullWorker, "execute", gated_execute)
    return gate
