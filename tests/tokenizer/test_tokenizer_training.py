"""The toy tokenizer of `make-model`: trained locally, loadable offline by transformers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from radixmesh.make_model.corpus import CORPUS
from radixmesh.make_model.tokenizer import MIN_VOCAB_SIZE, TokenizerInfo, train_tokenizer

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Café? 你好 😀"},
]


def test_loads_offline_with_the_requested_vocabulary(model_dir: Path, info: TokenizerInfo):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert len(hf) == info.vocab_size == 512
    assert hf.bos_token_id == info.bos_token_id == hf.convert_tokens_to_ids("<s>")
    assert hf.eos_token_id == info.eos_token_id == hf.convert_tokens_to_ids("</s>")
    assert hf.pad_token_id == info.pad_token_id == hf.convert_tokens_to_ids("<pad>")
    assert info.eos_token_ids == (info.eos_token_id, hf.convert_tokens_to_ids("<|im_end|>"))
    assert hf.model_max_length == 4096


def test_config_names_the_fast_tokenizer_and_special_tokens(model_dir: Path):
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<s>", "</s>", "<pad>")
    assert "chat_template" in config


def test_same_vocab_size_gives_identical_files(tmp_path: Path):
    first = train_tokenizer(tmp_path / "a", 700)
    second = train_tokenizer(tmp_path / "b", 700)
    assert first == second
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_training_is_fast(tmp_path: Path):
    start = time.perf_counter()
    train_tokenizer(tmp_path, 2048)
    assert time.perf_counter() - start < 2.0


def test_vocabulary_beyond_the_corpus_is_filled_and_never_encoded(tmp_path: Path):
    info = train_tokenizer(tmp_path, 20_000)
    hf = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert len(hf) == info.vocab_size == 20_000
    assert hf.decode([19_999]) == hf.convert_ids_to_tokens(19_999)
    first_filler = min(hf.convert_tokens_to_ids(t) for t in hf.get_vocab() if "filler" in t)
    assert max(hf(CORPUS)["input_ids"]) < first_filler


def test_rejects_a_vocabulary_smaller_than_bytes_and_specials(tmp_path: Path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(tmp_path, MIN_VOCAB_SIZE - 1)


def test_text_round_trips_and_gets_a_bos(model_dir: Path, info: TokenizerInfo):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text = "Unseen words: Kraków, naïveté, 東京タワー, 🦀 crabs & 3.5e-7!"
    ids = hf(text)["input_ids"]
    assert ids[0] == info.bos_token_id
    assert hf.decode(ids, skip_special_tokens=True) == text


def test_rare_characters_split_across_tokens(model_dir: Path):
    """The detokenizer tests rely on tokens that hold only part of a UTF-8 character."""
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = hf("東京タワー 🦀", add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in hf.decode([token_id]) for token_id in ids)


def test_special_tokens_in_text_are_single_ids(model_dir: Path, info: TokenizerInfo):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = hf("a<|im_end|>b", add_special_tokens=False)["input_ids"]
    assert info.eos_token_ids[1] in ids
    assert hf.decode(ids, skip_special_tokens=True) == "ab"


def test_chat_template_renders_chatml_with_generation_prompt(model_dir: Path):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    rendered = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<s><|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nCafé? 你好 😀<|im_end|>\n"
        "<|im_start|>assistant\n")
    without = hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=False)
    assert without == rendered.removesuffix("<|im_start|>assistant\n")


def test_chat_template_tokenizes_with_a_single_bos(model_dir: Path, info: TokenizerInfo):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = hf.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert ids.count(info.bos_token_id) == 1 and ids[0] == info.bos_token_id
    assert ids.count(info.eos_token_ids[1]) == len(MESSAGES)
