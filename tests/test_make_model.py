"""`radixmesh make-model` writes a directory HF loads offline, with a usable random model."""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from radixmesh.make_model import add_cli_args, default_model_path, make_model, run_cli


def test_output_loads_with_hf_and_renders_chat(tmp_path: Path) -> None:
    make_model(tmp_path, "qwen3", vocab_size=600, max_position_embeddings=512)

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    config = json.loads((tmp_path / "config.json").read_text())
    generation = json.loads((tmp_path / "generation_config.json").read_text())

    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["dtype"] == "float32"
    assert config["vocab_size"] == len(tokenizer) == 600
    assert tokenizer.model_max_length == config["max_position_embeddings"] == 512
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert generation["eos_token_id"] == [tokenizer.eos_token_id,
                                          tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert config["bos_token_id"] == tokenizer.bos_token_id
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Hello there"}],
                                         add_generation_prompt=True, tokenize=False)
    assert "Hello there" in chat and chat.endswith("<|im_start|>assistant\n")
    ids = tokenizer("Hello there", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], 600)


def test_same_arguments_give_identical_weights(tmp_path: Path) -> None:
    make_model(tmp_path / "a", "mistral", seed=5)
    make_model(tmp_path / "b", "mistral", seed=5)
    make_model(tmp_path / "c", "mistral", seed=6)

    weights = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]


def test_bfloat16_and_sharding(tmp_path: Path) -> None:
    make_model(tmp_path, "llama", dtype="bfloat16", max_shard_size=30_000)

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(tmp_path)

    assert len(set(index["weight_map"].values())) > 1
    assert set(index["weight_map"]) == set(model.state_dict())
    assert model.dtype == torch.bfloat16


@torch.no_grad()
def test_random_model_is_peaked_and_varied(tmp_path: Path) -> None:
    """Greedy decoding needs clear top-1 margins and context-dependent predictions."""
    make_model(tmp_path, "llama", tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    prompts = torch.randint(0, model.config.vocab_size, (8, 32),
                            generator=torch.Generator().manual_seed(0))

    logits = model(prompts).logits
    top2 = logits.topk(2, dim=-1).values
    gaps = top2[..., 0] - top2[..., 1]
    predictions = logits.argmax(-1)

    assert (gaps > 1e-2).float().mean() > 0.97
    assert gaps.median() > 0.3
    assert predictions.unique().numel() > 100  # not one favourite token
    assert (predictions != prompts).float().mean() > 0.9  # not "repeat the input"


def test_cli_writes_the_requested_model(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args([str(tmp_path), "--arch", "qwen2", "--hidden-size", "32",
                              "--num-layers", "1", "--num-heads", "2", "--num-kv-heads", "1",
                              "--tie-word-embeddings", "--rope-scaling",
                              '{"rope_type": "linear", "factor": 2.0}'])

    assert run_cli(args) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (config["hidden_size"], config["num_hidden_layers"]) == (32, 1)
    assert config["tie_word_embeddings"] is True
    assert config["rope_parameters"]["rope_type"] == "linear"


def test_invalid_shapes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="divide"):
        make_model(tmp_path, "llama", num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="unknown arch"):
        make_model(tmp_path, "gpt2")


def test_default_model_is_made_once_even_when_raced(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RADIXMESH_HOME", str(tmp_path))

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: default_model_path(), range(2)))
    stamp = (paths[0] / "model.safetensors").stat().st_mtime_ns

    assert paths[0] == paths[1] == tmp_path / "models" / "tiny-llama"
    assert (paths[0] / "tokenizer.json").is_file()
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tiny-llama"]  # no leftovers
    assert default_model_path() == paths[0]
    assert (paths[0] / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
