"""Fixtures of the edge tests: one real mesh (`radixmesh up`, the tiny model on the CPU) shared
by the session, and the mesh tests' process helpers (`tests/mesh/conftest.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mesh.conftest import (  # noqa: F401 (fixtures, registered by import)
    MeshProcess,
    mesh_model_path,
    services,
    start_mesh,
)


@pytest.fixture(scope="session")
def edge_mesh(mesh_model_path: Path) -> Iterator[MeshProcess]:  # noqa: F811
    """The model worker, not the null one: a prompt past the context crashed its step."""
    with start_mesh(mesh_model_path, worker="model") as mesh:
        yield mesh
