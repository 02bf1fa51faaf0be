"""The hierarchical cache under tensor parallelism: each rank backs up and loads its own part of
every host slot, so a TP=2 mesh whose conversations overflow the device pool (histories go to
host memory and files, and come back) gives the greedy tokens of one device without the cache;
and after a restart, pages come back from the files both ranks' parts were written to."""

from __future__ import annotations

from pathlib import Path

import pytest

from radixmesh.make_model import make_model
from tests.hicache.mesh_runs import BASE_FLAGS, Run, converse, tiered_mesh
from tests.mesh.conftest import start_mesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
TP = ("--tp-size", "2", "--tp-timeout", "30")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("tp-tiers-model") / "llama", "llama")


@pytest.fixture(scope="module")
def reference(model: Path) -> Run:
    """One device, the device radix cache alone."""
    with start_mesh(model, *BASE_FLAGS, worker="model") as mesh:
        return converse(mesh)


def tp_run(model: Path, l3_dir: Path) -> Run:
    with tiered_mesh(model, l3_dir, *TP) as tiered:
        return converse(tiered.mesh, tiered.hicache_metrics_url)


def test_tp2_with_host_and_file_tiers_gives_the_one_device_tokens(
        model: Path, reference: Run, tmp_path: Path) -> None:
    l3_dir = tmp_path / "l3"
    first = tp_run(model, l3_dir)
    assert first.alive, "the mesh ended: a failed page accounting check ends the scheduler"
    assert first.outputs == reference.outputs
    assert first.tiers["host"] > 0, first.tiers  # histories came back from host memory
    # A fresh mesh on the same files: its first turns find their history in L3, written and
    # read by both ranks (each its part of every slot).
    again = tp_run(model, l3_dir)
    assert again.alive and again.outputs == reference.outputs
    assert again.tiers["storage"] > 0, again.tiers
