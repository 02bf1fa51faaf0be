"""Fixtures of the tokenizer service tests: a toy tokenizer trained once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from radixmesh.make_model.tokenizer import TokenizerInfo, train_tokenizer
from radixmesh.shared.tokenizer import TextTokenizer

VOCAB_SIZE = 512


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TokenizerInfo]:
    model_dir = tmp_path_factory.mktemp("toy_tokenizer")
    return model_dir, train_tokenizer(model_dir, VOCAB_SIZE)


@pytest.fixture(scope="session")
def model_dir(trained: tuple[Path, TokenizerInfo]) -> Path:
    return trained[0]


@pytest.fixture(scope="session")
def info(trained: tuple[Path, TokenizerInfo]) -> TokenizerInfo:
    return trained[1]


@pytest.fixture(scope="session")
def text_tokenizer(model_dir: Path) -> TextTokenizer:
    return TextTokenizer.from_pretrained(model_dir)
