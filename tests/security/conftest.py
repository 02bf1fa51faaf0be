"""Fixtures of the security tests: one mesh (`radixmesh up`, null worker) that takes two API
keys, shared by every module of this folder that asks for it; and, per module, a set of
certificates and a foreign set (another CA, trusted by nobody)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radixmesh.launcher.certs import CertificateSet, make_certificates
from tests.mesh.conftest import (  # noqa: F401 (fixtures, registered by import)
    MeshProcess,
    mesh_model_path,
    start_mesh,
)
from tests.security.keyed_mesh import KEYS


@pytest.fixture(scope="package")
def keyed_mesh(mesh_model_path: Path) -> Iterator[MeshProcess]:  # noqa: F811
    with start_mesh(mesh_model_path, "--api-key", KEYS[0], "--api-key", KEYS[1],
                    worker="null") as mesh:
        yield mesh


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("tls") / "certs")


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    """Another CA, with a client certificate of its own: trusted by nobody here."""
    return make_certificates(tmp_path_factory.mktemp("tls") / "foreign")
