"""Where the model directory is: `--model-path` as a local directory, a hub id, or the default.

Every service that reads the model directory (the tokenizer and detokenizer for the
tokenizer, the worker for weights and shape) resolves it here, so they agree. Making the
default model is the launcher's job (`radixmesh up`, `radixmesh serve`, `radixmesh
make-model`): a service only finds it, so no service carries the model-making code. A hub id
(`ORG/NAME`, see shared/hub.py) is best resolved once by the launcher, which then hands every
service the same snapshot directory: a branch that moves between two services' starts cannot
split the mesh across two commits.
"""

from __future__ import annotations

import os
from pathlib import Path

from radixmesh.shared.hub import (
    ModelNotFoundError,
    hub_id_of_snapshot,
    is_hub_id,
    resolve_hub_model,
)

DEFAULT_MODEL_NAME = "tiny-llama"


def radixmesh_home() -> Path:
    return Path(os.environ.get("RADIXMESH_HOME") or Path.home() / ".cache" / "radixmesh")


def default_model_dir() -> Path:
    """`$RADIXMESH_HOME/models/tiny-llama`; it may not exist yet."""
    return radixmesh_home() / "models" / DEFAULT_MODEL_NAME


def resolve_model_path(model_path: str | Path | None, revision: str | None = None,
                       token: str | None = None) -> Path:
    """`--model-path` as a local directory; a hub id's snapshot directory at `revision`
    (downloaded when online and not cached, `token` or HF_TOKEN authorizing it); or the
    default model, which must exist by now. `revision` and `token` matter for hub ids only."""
    if model_path is not None:
        if is_hub_id(model_path):
            return resolve_hub_model(str(model_path), revision, token)
        return Path(model_path)
    path = default_model_dir()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"no --model-path given and the default model is missing at {path}; run "
            "`radixmesh make-model` or start the service through `radixmesh serve` or "
            "`radixmesh up`, which make it on first use")
    return path


def model_name(model_path: str | Path | None) -> str:
    """The name clients use for a model: its hub id (given as one, or a hub snapshot
    directory), else its directory's name."""
    if model_path is None:
        return DEFAULT_MODEL_NAME
    if is_hub_id(model_path):
        return str(model_path)
    return hub_id_of_snapshot(model_path) or Path(model_path).resolve().name


__all__ = ["DEFAULT_MODEL_NAME", "ModelNotFoundError", "default_model_dir", "model_name",
           "radixmesh_home", "resolve_model_path"]
