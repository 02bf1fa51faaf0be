"""TextTokenizer: the tokenizer service's view of a model's HF tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from radixmesh.make_model.tokenizer import TokenizerInfo
from radixmesh.shared.tokenizer import TextTokenizer

MESSAGES = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 6 × 7? Réponds en 日本語."}]


def test_encode_follows_hf_defaults(model_dir: Path, text_tokenizer: TextTokenizer):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    text = "The scheduler keeps a queue. 🚀"
    assert text_tokenizer.encode(text) == hf(text)["input_ids"]
    assert text_tokenizer.encode(text)[0] == hf.bos_token_id


def test_chat_ids_match_hf_and_end_with_the_assistant_opener(
        model_dir: Path, text_tokenizer: TextTokenizer):
    hf = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    ids = text_tokenizer.apply_chat_template(MESSAGES)
    assert ids == hf.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    opener = hf("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(opener):] == opener
    assert text_tokenizer.render_chat(MESSAGES).endswith("<|im_start|>assistant\n")


def test_decode_skips_special_tokens_unless_asked(text_tokenizer: TextTokenizer):
    ids = text_tokenizer.apply_chat_template(MESSAGES)
    assert "<|im_start|>" not in text_tokenizer.decode(ids)
    assert text_tokenizer.decode(ids, skip_special_tokens=False).startswith("<s><|im_start|>")


def test_decode_keeps_spaces_before_punctuation(text_tokenizer: TextTokenizer):
    text = "a , b . c ' d n't"
    assert text_tokenizer.decode(text_tokenizer.encode(text)) == text


def test_vocab_size_and_eos_ids(text_tokenizer: TextTokenizer, info: TokenizerInfo):
    assert text_tokenizer.vocab_size == info.vocab_size
    assert text_tokenizer.eos_token_ids == (info.eos_token_id,)


def test_eos_ids_from_generation_config_are_added(
        tmp_path: Path, model_dir: Path, info: TokenizerInfo):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": list(info.eos_token_ids)}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert TextTokenizer.from_pretrained(tmp_path).eos_token_ids == (*info.eos_token_ids, 7)
