"""`radixmesh up` supervising real services (null worker, tiny model): a service killed with
SIGKILL is restarted on its address while the others keep running, and requests succeed
again; Ctrl-C during a restart's backoff stops everything; a crash loop, or any exit under
`--restart-policy never`, stops the mesh with exit status 1."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import FollowedMesh, followed_mesh, wait_gone, wait_requests_succeed

ALL = {"worker", "detokenizer", "hicache", "scheduler", "tokenizer"}
# Until the scheduler reconnects to a peer that comes back (issue 17's other part), it exits
# when the worker or the detokenizer dies, and `up` restarts it too.
SCHEDULER_PEERS = {"worker", "detokenizer", "hicache"}
STOP_PROMPTLY_S = 15.0


@pytest.fixture(scope="module")
def tiered_mesh(mesh_model_path: Path) -> Iterator[FollowedMesh]:
    # The hierarchical cache adds the fifth service, the hicache (the null worker holds no KV,
    # so the scheduler does not use it, but `up` runs and supervises it all the same).
    with followed_mesh(mesh_model_path, "--enable-hierarchical-cache") as mesh:
        yield mesh


@pytest.mark.parametrize("name", ["worker", "detokenizer", "hicache", "scheduler", "tokenizer"])
def test_a_killed_service_is_restarted_and_the_others_stay_up(
        tiered_mesh: FollowedMesh, mesh_model_path: Path, name: str):
    mesh, model = tiered_mesh, mesh_model_path.name
    wait_requests_succeed(mesh, model)  # settled after the previous kill
    before = mesh.service_pids()
    assert set(before) == ALL
    mark = len(mesh.output)
    os.kill(before[name], signal.SIGKILL)
    mesh.line(rf"the {name} was killed by SIGKILL \(status -9\); restarting it in [\d.]+s "
              r"\(attempt \d+\)$", after=mark)
    mesh.line(rf"the {name} is serving again \(pid \d+", after=mark)
    wait_requests_succeed(mesh, model)
    after = mesh.service_pids()
    assert mesh.process.poll() is None, "`up` itself stays up"
    assert set(after) == ALL and after[name] != before[name]
    changed = {service for service in ALL if after[service] != before[service]}
    allowed = {name, "scheduler"} if name in SCHEDULER_PEERS else {name}
    assert name in changed and changed <= allowed, f"restarted: {changed}"


def test_ctrl_c_during_a_restart_backoff_stops_everything_promptly(mesh_model_path: Path):
    with followed_mesh(mesh_model_path, "--restart-backoff", "60",
                       "--restart-backoff-max", "60") as mesh:
        pids = mesh.service_pids()
        os.kill(pids["tokenizer"], signal.SIGKILL)
        mesh.line(r"the tokenizer was killed by SIGKILL \(status -9\); restarting it in 60.0s")
        start = time.monotonic()
        mesh.process.send_signal(signal.SIGINT)
        assert mesh.process.wait(STOP_PROMPTLY_S) == 0
        assert time.monotonic() - start < STOP_PROMPTLY_S
        assert wait_gone(list(pids.values())), "a service outlived `radixmesh up`"
        assert not any("restarted the" in line for line in mesh.output)


def test_a_crash_loop_stops_the_mesh_with_a_clear_message(mesh_model_path: Path):
    with followed_mesh(mesh_model_path, "--max-restarts", "1") as mesh:
        seen = set(mesh.service_pids().values())
        os.kill(mesh.service_pids()["tokenizer"], signal.SIGKILL)
        mesh.line(r"the tokenizer is serving again")
        seen |= set(mesh.service_pids().values())
        os.kill(mesh.service_pids()["tokenizer"], signal.SIGKILL)
        assert mesh.process.wait(STOP_PROMPTLY_S) == 1
        mesh.line(r"the tokenizer was killed by SIGKILL \(status -9\): 2 exits within 60s, past "
                  r"--max-restarts 1; giving up; stopping the mesh$", timeout=5)
        assert wait_gone(list(seen))


def test_restart_policy_never_stops_the_mesh_when_a_service_dies(mesh_model_path: Path):
    with followed_mesh(mesh_model_path, "--restart-policy", "never") as mesh:
        pids = mesh.service_pids()
        os.kill(pids["worker"], signal.SIGKILL)
        assert mesh.process.wait(STOP_PROMPTLY_S) == 1
        mesh.line(r"the worker was killed by SIGKILL \(status -9\); stopping the mesh$",
                  timeout=5)
        assert wait_gone(list(pids.values()))
        assert not any("restart" in line for line in mesh.output)
