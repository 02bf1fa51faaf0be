"""The hierarchical cache across failures (issue 17, design §4/§11): a replaced worker gets
the L2 pool attached again, and losing the hicache service degrades to misses, never makes
the mesh unready. Real processes: the tiny model worker on CPU, the hicache service with a
file L3."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.resilience.conftest import SERVING, ResilientMesh, generate, health, run, wait_until

pytestmark = pytest.mark.timeout(300)
WORKER = ("--worker", "model", "--device", "cpu", "--dtype", "float32", "--page-size", "4",
          "--max-total-tokens", "300")


def serve_one(mesh: ResilientMesh, rid: str, first: int = 10) -> None:
    done = run(generate(mesh["tokenizer"].address, rid, list(range(first, first + 40)), 8))
    assert done.code is None and len(done.tokens) == 8, done


def pools_attached(mesh: ResilientMesh) -> int:
    """Host pools the scheduler attached so far (each sent to the worker with a plan)."""
    return sum(1 for line in mesh["scheduler"].output().splitlines()
               if "host pool " in line and "(none)" not in line)


def test_a_new_worker_gets_the_host_pool_and_a_lost_hicache_only_degrades(mesh_factory,
                                                                         tmp_path: Path):
    mesh = mesh_factory(worker_flags=WORKER, hicache_flags=(
        "--hicache-storage-backend", "file", "--hicache-storage-dir", str(tmp_path / "l3")))
    serve_one(mesh, "first")
    assert pools_attached(mesh) == 1
    backed_up = mesh.scheduler_load().backed_up_tokens
    assert backed_up > 0  # write_through: the prompt's pages went to L2 through the worker

    mesh["worker"].kill()
    wait_until(lambda: health(mesh["scheduler"].address) != SERVING, "scheduler NOT_SERVING")
    mesh.replace("worker").wait_serving()
    mesh["scheduler"].wait_serving()
    serve_one(mesh, "on-the-new-worker")
    assert pools_attached(mesh) == 2  # attached afresh for the new worker
    assert mesh.scheduler_load().backed_up_tokens > backed_up  # and backups go through it

    mesh["hicache"].kill()
    for i in range(3):  # served from the device alone; the mesh never turns unready
        serve_one(mesh, f"without-hicache-{i}", first=100 + 50 * i)  # new pages to store
        assert health(mesh["scheduler"].address) == SERVING and mesh.http_health() == 200
    mesh["scheduler"].wait_logged("serving from the device pool alone")
    mesh.replace("hicache").wait_serving()
    serve_one(mesh, "with-hicache-again", first=300)
    wait_until(lambda: pools_attached(mesh) == 3, "the new hicache's pool attached")
    serve_one(mesh, "with-hicache-again", first=350)
    assert mesh["scheduler"].alive and mesh["worker"].alive
    mesh.wait_idle()
