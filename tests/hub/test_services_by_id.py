"""Services run alone (`radixmesh serve`) take a hub id too: the tokenizer and detokenizer
resolve the same snapshot as the worker, revision and token included."""

from __future__ import annotations

import pytest

from radixmesh.services.detokenizer.config import DetokenizerConfig
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.shared.tokenizer import load_tokenizer
from tests.hub.conftest import HubCache
from tests.mesh.conftest import ServiceStarter


def test_every_model_reader_has_the_hub_flags_and_hides_the_token() -> None:
    for config_class in (WorkerConfig, TokenizerConfig, DetokenizerConfig):
        config = config_class(revision="v2", hf_token="hf_secret")
        assert config.revision == "v2" and "hf_secret" not in repr(config)


def test_the_tokenizer_loads_from_the_revisions_snapshot(offline_hub: HubCache) -> None:
    tokenizer = load_tokenizer(offline_hub.repo_id, revision="v2")
    assert tokenizer is not None
    assert tokenizer.encode("hello") == load_tokenizer(offline_hub.v2).encode("hello")


@pytest.mark.slow
def test_a_detokenizer_serves_a_hub_model_by_id(offline_hub: HubCache) -> None:
    starter = ServiceStarter()
    try:
        service = starter.start("detokenizer", "--model-path", offline_hub.repo_id,
                                "--revision", "v2")  # returns once SERVING
        assert service.process.poll() is None
    finally:
        starter.stop_all()
