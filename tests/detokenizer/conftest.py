"""Fixtures of the detokenizer tests: a toy byte-level tokenizer trained once per session."""

from __future__ import annotations

import pytest

from radixmesh.make_model.tokenizer import train_tokenizer
from radixmesh.shared.tokenizer import TextTokenizer


@pytest.fixture(scope="session")
def text_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    model_dir = tmp_path_factory.mktemp("toy_tokenizer")
    train_tokenizer(model_dir, vocab_size=512)
    return TextTokenizer.from_pretrained(model_dir)
