"""`radixmesh up --model-path ORG/NAME`: resolved once by the launcher, so every service reads
the same snapshot and clients call the model by its id; a missing id stops `up` at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.hub.conftest import HubCache
from tests.mesh.conftest import child_pids, free_port, spawn_mesh, wait_mesh_up

pytestmark = pytest.mark.slow


def test_up_serves_a_hub_model_by_its_id(offline_hub: HubCache) -> None:
    mesh = spawn_mesh(offline_hub.repo_id, "--revision", "v2",  # type: ignore[arg-type]
                      "--hf-token", "hf_secret", worker="model")
    try:
        wait_mesh_up(mesh)
        client = openai.OpenAI(base_url=f"{mesh.http_url}/v1", api_key="none", max_retries=0)
        assert [model.id for model in client.models.list()] == [offline_hub.repo_id]
        reply = client.completions.create(model=offline_hub.repo_id, prompt="hello",
                                          max_tokens=3)
        assert reply.usage.completion_tokens == 3
        # The services got the snapshot's directory, never the id, revision or the token.
        command_lines = [Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
                         for pid in child_pids(mesh.process.pid)]
        assert len(command_lines) == 4
        readers = [argv for argv in command_lines if "--model-path" in argv]
        assert len(readers) == 3  # all but the scheduler
        for argv in readers:
            assert argv[argv.index("--model-path") + 1] == str(offline_hub.v2)
        for argv in command_lines:
            assert "hf_secret" not in argv and "--revision" not in argv
    finally:
        mesh.stop()


def test_up_with_a_missing_id_fails_naming_it(offline_hub: HubCache) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "radixmesh.cli", "up", "--model-path", "test-org/nope",
         "--port", str(free_port()), "--grpc-port", str(free_port())],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 2
    assert "test-org/nope" in done.stdout + done.stderr
