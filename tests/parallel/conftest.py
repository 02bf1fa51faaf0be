"""The parallelism tests' shared fixtures."""

from tests.mesh.conftest import mesh_model_path as mesh_model_path  # the session's tiny model
