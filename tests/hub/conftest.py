"""A Hugging Face hub cache laid out by hand, with models made by `make-model`.

The layout is huggingface_hub's: `models--ORG--NAME/blobs/<hash>` holds each file once,
`snapshots/<commit>/<file>` links to its blob, and `refs/<branch or tag>` holds a commit. Two
commits of `test-org/tiny-llama`: `main` (seed 0) and the tag `v2` (seed 1), so a revision
that resolves to the wrong snapshot loads visibly different weights.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from radixmesh.make_model import make_model

REPO_ID = "test-org/tiny-llama"
MAIN_COMMIT = "a" * 40
V2_COMMIT = "b" * 40


@dataclass(frozen=True)
class HubCache:
    root: Path            # what HF_HUB_CACHE points at
    repo_id: str
    snapshots: dict[str, Path]  # commit -> snapshot directory

    @property
    def main(self) -> Path:
        return self.snapshots[MAIN_COMMIT]

    @property
    def v2(self) -> Path:
        return self.snapshots[V2_COMMIT]


def add_snapshot(repo_dir: Path, commit: str, model_dir: Path) -> Path:
    """Files of `model_dir` as blobs of the repo, linked from `snapshots/<commit>/`."""
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    for file in sorted(model_dir.iterdir()):
        data = file.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / file.name)
    return snapshot


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> HubCache:
    made = tmp_path_factory.mktemp("made")
    root = tmp_path_factory.mktemp("hub")
    repo_dir = root / ("models--" + REPO_ID.replace("/", "--"))
    snapshots = {
        MAIN_COMMIT: add_snapshot(repo_dir, MAIN_COMMIT, make_model(made / "main", seed=0)),
        V2_COMMIT: add_snapshot(repo_dir, V2_COMMIT, make_model(made / "v2", seed=1)),
    }
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(MAIN_COMMIT)
    (repo_dir / "refs" / "v2").write_text(V2_COMMIT)
    return HubCache(root, REPO_ID, snapshots)


@pytest.fixture
def offline_hub(hub_cache: HubCache, monkeypatch: pytest.MonkeyPatch) -> HubCache:
    """The cache as the only hub there is: HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache.root))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub_cache
