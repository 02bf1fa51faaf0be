"""`--model-path ORG/NAME`: hub ids resolve through huggingface_hub's cache, offline here.

The cache is laid out by hand (conftest.py); HF_HUB_OFFLINE=1 keeps huggingface_hub off the
network, exactly as an air-gapped deployment runs. The real resolution code runs throughout:
the one seam is `radixmesh.shared.hub.snapshot_download`, wrapped to record its arguments and
then call through to huggingface_hub.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from radixmesh.engine import Engine
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared import hub
from radixmesh.shared.model_location import ModelNotFoundError, model_name, resolve_model_path
from tests.hub.conftest import MAIN_COMMIT, V2_COMMIT, HubCache

GREEDY = {"input_ids": [3, 14, 15, 92, 65], "max_new_tokens": 8, "temperature": 0,
          "ignore_eos": True}


@pytest.fixture
def download_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every call of the seam, by keyword, each then served by the real snapshot_download."""
    calls: list[dict[str, Any]] = []
    real = hub.snapshot_download

    def recording(repo_id: str, **kwargs: Any) -> str:
        calls.append({"repo_id": repo_id, **kwargs})
        return real(repo_id, **kwargs)

    monkeypatch.setattr(hub, "snapshot_download", recording)
    return calls


def test_an_id_resolves_to_the_snapshot_main_points_at(offline_hub: HubCache,
                                                       download_calls: list) -> None:
    path = resolve_model_path(offline_hub.repo_id)

    assert path == offline_hub.main
    [call] = download_calls
    assert call["repo_id"] == offline_hub.repo_id and call["revision"] is None
    assert call["local_files_only"] is True  # HF_HUB_OFFLINE honoured, read at call time
    assert Path(call["cache_dir"]) == offline_hub.root  # HF_HUB_CACHE likewise


@pytest.mark.parametrize("revision", ["v2", V2_COMMIT])
def test_a_revision_resolves_to_its_snapshot(offline_hub: HubCache, revision: str) -> None:
    assert resolve_model_path(offline_hub.repo_id, revision=revision) == offline_hub.v2
    assert resolve_model_path(offline_hub.repo_id, revision=MAIN_COMMIT) == offline_hub.main


def test_the_token_is_passed_through(offline_hub: HubCache, download_calls: list,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    resolve_model_path(offline_hub.repo_id, revision="v2", token="hf_from_flag")
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    resolve_model_path(offline_hub.repo_id)
    resolve_model_path(offline_hub.repo_id, token="hf_flag_wins")

    assert [(call["revision"], call["token"]) for call in download_calls] == [
        ("v2", "hf_from_flag"), (None, "hf_from_env"), (None, "hf_flag_wins")]


def test_only_what_the_mesh_reads_is_fetched(offline_hub: HubCache,
                                             download_calls: list) -> None:
    resolve_model_path(offline_hub.repo_id)

    patterns = download_calls[0]["allow_patterns"]
    assert {"*.json", "*.safetensors"} <= set(patterns)
    assert not any(pattern.endswith((".bin", ".pth")) for pattern in patterns)


@pytest.mark.parametrize("revision", [None, "no-such-branch"])
def test_a_missing_model_is_one_line_naming_the_id(offline_hub: HubCache,
                                                   revision: str | None) -> None:
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model_path("test-org/no-such-model" if revision is None else offline_hub.repo_id,
                           revision=revision)

    message = str(error.value)
    assert "\n" not in message
    assert ("'test-org/no-such-model'" if revision is None else "'test-org/tiny-llama'") in message
    assert "HF_HUB_OFFLINE" in message
    assert isinstance(error.value, ValueError)  # CLIs print a rejected flag in one line


def test_gated_and_unknown_models_are_explained_in_one_line() -> None:
    class GatedRepoError(OSError):
        pass

    class RepositoryNotFoundError(OSError):
        pass

    gated = hub._explain("meta-llama/Llama-3.1-8B", None, False, GatedRepoError("401\nbody"))
    unknown = hub._explain("org/typo", "main", False, RepositoryNotFoundError("404"))

    assert "'meta-llama/Llama-3.1-8B' is gated" in gated and "--hf-token" in gated
    assert "'org/typo' was not found" in unknown
    assert "\n" not in gated + unknown


def test_local_directories_win_over_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        download_calls: list) -> None:
    (tmp_path / "test-org" / "tiny-llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    assert resolve_model_path("test-org/tiny-llama") == Path("test-org/tiny-llama")
    assert not hub.is_hub_id("test-org/tiny-llama")
    assert not hub.is_hub_id("tiny-llama") and not hub.is_hub_id("/abs/path")
    assert download_calls == []


def test_clients_call_a_hub_model_by_its_id(offline_hub: HubCache) -> None:
    assert model_name(offline_hub.repo_id) == offline_hub.repo_id
    # The launcher hands services the resolved snapshot: still named by the id.
    assert model_name(offline_hub.main) == offline_hub.repo_id


def test_the_worker_loads_a_model_by_id(offline_hub: HubCache) -> None:
    """The engine (the worker's real loader, the tokenizer) by id, against the same model by
    its snapshot directory: same weights, same greedy tokens."""
    by_id = Engine(WorkerConfig(model_path=offline_hub.repo_id, device="cpu"))
    by_dir = Engine(WorkerConfig(model_path=str(offline_hub.main), device="cpu"))

    assert Path(by_id.info.model_id) == offline_hub.main
    for (name, ours), (_, theirs) in zip(by_id.runner.model.state_dict().items(),
                                         by_dir.runner.model.state_dict().items(), strict=True):
        assert torch.equal(ours, theirs), name
    [a], [b] = by_id.generate([GREEDY]), by_dir.generate([GREEDY])
    assert a.token_ids == b.token_ids and len(a.token_ids) == GREEDY["max_new_tokens"]
    assert by_id.tokenizer is not None


def test_a_worker_given_a_missing_id_fails_naming_it(offline_hub: HubCache) -> None:
    with pytest.raises(ModelNotFoundError, match="'test-org/absent'"):
        Engine(WorkerConfig(model_path="test-org/absent", device="cpu"))
