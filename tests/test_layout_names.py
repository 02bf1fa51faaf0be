"""The repository's top-level folders never shadow a well-known distribution (design §1)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import transformers.utils

REPO = Path(__file__).resolve().parents[1]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def test_kernels_resolves_to_the_distribution_not_our_folder() -> None:
    spec = importlib.util.find_spec("kernels")
    if _installed("kernels"):
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).resolve().parent != REPO / "kernels"
    # Either way transformers' probe answers instead of failing on our folder.
    assert transformers.utils.is_kernels_available() == _installed("kernels")


def test_the_project_imports_under_its_namespace() -> None:
    spec = importlib.util.find_spec("radixmesh.kernels")
    assert spec is not None and Path(spec.origin).resolve().parent == REPO / "kernels"
