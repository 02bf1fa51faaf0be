"""load_model: safetensors (single or sharded), dummy weights, dtypes and clear mismatch errors."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from radixmesh.make_model import make_model
from radixmesh.services.worker.loader import WeightLoadError, load_model, resolve_dtype
from radixmesh.services.worker.model_config import ModelConfig


def load(path: Path, **kwargs: str) -> torch.nn.Module:
    return load_model(ModelConfig.from_pretrained(path), path, **kwargs)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for name, tensor in a_state.items():
        assert torch.equal(tensor, b_state[name]), name


def test_sharded_checkpoint_loads_like_single_file(tmp_path: Path) -> None:
    make_model(tmp_path / "single", "qwen2", seed=3)
    make_model(tmp_path / "sharded", "qwen2", seed=3, max_shard_size=40_000)

    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert_same_weights(load(tmp_path / "single"), load(tmp_path / "sharded"))


def test_loaded_model_is_frozen_eval_mode_in_requested_dtype(tmp_path: Path) -> None:
    make_model(tmp_path, "llama")

    model = load(tmp_path, dtype="bfloat16")

    assert not model.training
    assert all(p.dtype == torch.bfloat16 and not p.requires_grad for p in model.parameters())
    assert model.model.rotary_emb.cos_cache.dtype == torch.float32  # tables stay float32
    weights = load_file(tmp_path / "model.safetensors")
    assert torch.equal(model.model.norm.weight, weights["model.norm.weight"].to(torch.bfloat16))


def test_dummy_weights_need_only_config_json(tmp_path: Path) -> None:
    make_model(tmp_path / "real", "qwen3", tie_word_embeddings=True)
    (tmp_path / "config-only").mkdir()
    shutil.copy(tmp_path / "real" / "config.json", tmp_path / "config-only")

    dummy = load(tmp_path / "config-only", load_format="dummy", dtype="bfloat16")
    again = load(tmp_path / "config-only", load_format="dummy", dtype="bfloat16")
    real = load(tmp_path / "real")

    shapes = {name: tensor.shape for name, tensor in real.state_dict().items()}
    assert {name: tensor.shape for name, tensor in dummy.state_dict().items()} == shapes
    assert all(p.dtype == torch.bfloat16 for p in dummy.parameters())
    assert_same_weights(dummy, again)  # deterministic
    assert torch.all(dummy.model.norm.weight == 1)
    assert dummy.model.embed_tokens.weight.float().std() > 0


def test_missing_and_unexpected_weights_are_listed(tmp_path: Path) -> None:
    make_model(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"], weights["lm_head.weight"]
    weights["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(2)
    save_file(weights, tmp_path / "model.safetensors")

    with pytest.raises(WeightLoadError) as error:
        load(tmp_path)

    message = str(error.value)
    assert "missing: lm_head.weight, model.layers.1.mlp.up_proj.weight" in message
    assert "unexpected: model.layers.0.mlp.extra_proj.weight" in message


def test_wrong_shape_is_reported(tmp_path: Path) -> None:
    make_model(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, tmp_path / "model.safetensors")

    with pytest.raises(WeightLoadError, match=r"model.norm.weight \(checkpoint \(3,\), model"):
        load(tmp_path)


def test_fused_projections_hold_the_checkpoint_rows_in_order(tmp_path: Path) -> None:
    make_model(tmp_path, "qwen2")  # q/k/v biases too
    weights = load_file(tmp_path / "model.safetensors")

    model = load(tmp_path)

    for i, layer in enumerate(model.model.layers):
        attn, mlp = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        for suffix in ("weight", "bias"):
            expected = torch.cat([weights[f"{attn}.{name}.{suffix}"]
                                  for name in ("q_proj", "k_proj", "v_proj")])
            assert torch.equal(getattr(layer.self_attn.qkv_proj, suffix), expected)
        expected = torch.cat([weights[f"{mlp}.gate_proj.weight"], weights[f"{mlp}.up_proj.weight"]])
        assert torch.equal(layer.mlp.gate_up_proj.weight, expected)


def test_missing_shard_of_a_fused_projection_is_named(tmp_path: Path) -> None:
    make_model(tmp_path, "llama")
    weights = load_file(tmp_path / "model.safetensors")
    del weights["model.layers.0.self_attn.v_proj.weight"]
    save_file(weights, tmp_path / "model.safetensors")

    with pytest.raises(WeightLoadError) as error:
        load(tmp_path)

    assert str(error.value).endswith("  missing: model.layers.0.self_attn.v_proj.weight")


def test_wrong_shape_of_a_shard_is_named(tmp_path: Path) -> None:
    make_model(tmp_path, "llama", hidden_size=64, num_heads=4, num_kv_heads=2)
    weights = load_file(tmp_path / "model.safetensors")
    weights["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(48, 64)  # 3 kv heads
    save_file(weights, tmp_path / "model.safetensors")

    with pytest.raises(WeightLoadError) as error:
        load(tmp_path)

    message = str(error.value)
    assert ("wrong shape: model.layers.1.self_attn.k_proj.weight "
            "(checkpoint (48, 64), model (32, 64))") in message
    assert "missing" not in message and "unexpected" not in message


def test_tied_model_ignores_a_stored_lm_head(tmp_path: Path) -> None:
    make_model(tmp_path, "llama", tie_word_embeddings=True)
    weights = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in weights
    weights["lm_head.weight"] = torch.zeros_like(weights["model.embed_tokens.weight"])
    save_file(weights, tmp_path / "model.safetensors")

    model = load(tmp_path)

    hidden = torch.randn(3, model.config.hidden_size)
    expected = hidden @ weights["model.embed_tokens.weight"].T
    torch.testing.assert_close(model.compute_logits(hidden), expected)


def test_resolve_dtype(tmp_path: Path) -> None:
    make_model(tmp_path, "llama", dtype="bfloat16")
    config = ModelConfig.from_pretrained(tmp_path)

    assert resolve_dtype("auto", config) == torch.bfloat16
    assert resolve_dtype("auto", replace(config, dtype=None)) == torch.float32
    assert resolve_dtype("float16", config) == torch.float16
    with pytest.raises(ValueError, match="unsupported dtype 'fp8'"):
        resolve_dtype("fp8", config)


def test_unknown_load_format(tmp_path: Path) -> None:
    make_model(tmp_path, "llama")
    with pytest.raises(ValueError, match="unsupported load format 'pt'"):
        load(tmp_path, load_format="pt")
