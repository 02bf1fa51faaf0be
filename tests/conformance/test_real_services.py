"""Every real implementation of a service passes its contract's conformance suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mesh.conftest import ServiceProcess, ServiceStarter

from .conftest import run_suite

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def null_worker(module_services: ServiceStarter, mesh_model_path: Path) -> ServiceProcess:
    return module_services.start("worker", "--worker", "null",
                                 "--model-path", str(mesh_model_path))


@pytest.fixture(scope="module")
def detokenizer(module_services: ServiceStarter, mesh_model_path: Path) -> ServiceProcess:
    return module_services.start("detokenizer", "--model-path", str(mesh_model_path))


def assert_conforms(service: str, target: ServiceProcess) -> None:
    run = run_suite(service, target.address)
    assert run.returncode == 0 and not run.failures, run.output
    assert run.passes, run.output
    assert target.process.poll() is None  # the suite's refusals left the service up


def test_null_worker_conforms(null_worker: ServiceProcess):
    assert_conforms("worker", null_worker)


def test_model_worker_conforms(services: ServiceStarter, mesh_model_path: Path):
    worker = services.start("worker", "--worker", "model", "--device", "cpu",
                            "--model-path", str(mesh_model_path))
    assert_conforms("worker", worker)


def test_detokenizer_conforms(detokenizer: ServiceProcess):
    assert_conforms("detokenizer", detokenizer)


def test_scheduler_conforms(services: ServiceStarter, null_worker: ServiceProcess,
                            detokenizer: ServiceProcess):
    scheduler = services.start("scheduler", "--worker-address", null_worker.address,
                               "--detokenizer-address", detokenizer.address)
    assert_conforms("scheduler", scheduler)


def test_hicache_conforms(services: ServiceStarter, tmp_path: Path):
    hicache = services.start("hicache", "--hicache-storage-backend", "file",
                             "--hicache-storage-dir", str(tmp_path / "l3"))
    assert_conforms("hicache", hicache)
