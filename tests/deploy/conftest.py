"""The mesh tests' tiny model fixture, shared here (session-scoped: made once per run)."""

from tests.mesh.conftest import mesh_model_path  # noqa: F401
