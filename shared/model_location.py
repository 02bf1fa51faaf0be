"""Where models live when no `--model-path` is given.

Every service that reads the model directory (the tokenizer and detokenizer for the
tokenizer, the worker for weights and shape) resolves the same default here. Making the
default model is the launcher's job (`radixmesh up`, `radixmesh serve`, `radixmesh
make-model`): a service only finds it, so no service carries the model-making code.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_MODEL_NAME = "tiny-llama"


class ModelNotFoundError(FileNotFoundError):
    """No model directory where one was expected."""


def radixmesh_home() -> Path:
    return Path(os.environ.get("RADIXMESH_HOME") or Path.home() / ".cache" / "radixmesh")


def default_model_dir() -> Path:
    """`$RADIXMESH_HOME/models/tiny-llama`; it may not exist yet."""
    return radixmesh_home() / "models" / DEFAULT_MODEL_NAME


def resolve_model_path(model_path: str | Path | None) -> Path:
    """`--model-path` as given, or the default model, which must exist by now."""
    if model_path is not None:
        return Path(model_path)
    path = default_model_dir()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"no --model-path given and the default model is missing at {path}; run "
            "`radixmesh make-model` or start the service through `radixmesh serve` or "
            "`radixmesh up`, which make it on first use")
    return path


def model_name(model_path: str | Path | None) -> str:
    """The name clients use for a model: its directory's name."""
    if model_path is None:
        return DEFAULT_MODEL_NAME
    return Path(model_path).resolve().name
