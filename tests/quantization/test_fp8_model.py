"""`--quantization fp8` in whole models on the CPU (the dequantizing path), prequantized FP8
checkpoints, and generation through the engine."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.loader import WeightLoadError, load_model
from radixmesh.services.worker.model_config import ModelConfig, UnsupportedModelError
from radixmesh.services.worker.quantization.fp8 import quantize_rows
from radixmesh.services.worker.quantization.linear import QuantLinear
from tests.quantization.common import (
    e4m3_rms_error,
    prefill_logits,
    random_tokens,
    relative_errors,
)

PROMPT_LEN = 48


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fp8-models")
    made = {arch: make_model(root / arch, arch, seed=1) for arch in ("llama", "qwen2", "qwen3")}
    made["llama-fp8"] = make_model(root / "llama-fp8", "llama", seed=1, quantization="fp8")
    made["qwen2-fp8"] = make_model(root / "qwen2-fp8", "qwen2", seed=1, quantization="fp8")
    return made


def load(path: Path, **kwargs: object) -> torch.nn.Module:
    return load_model(ModelConfig.from_pretrained(path), path, **kwargs)


def quantized_layers(model: torch.nn.Module) -> dict[str, QuantLinear]:
    return {name: module for name, module in model.named_modules()
            if isinstance(module, QuantLinear)}


def assert_bitwise_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    a_state, b_state = a.state_dict(), b.state_dict()
    assert a_state.keys() == b_state.keys()
    for name, tensor in a_state.items():
        other = b_state[name]
        assert tensor.dtype == other.dtype, name
        if tensor.dtype == torch.float8_e4m3fn:
            tensor, other = tensor.view(torch.uint8), other.view(torch.uint8)
        assert torch.equal(tensor, other), name


def test_every_decoder_projection_is_fp8_and_nothing_else(models: dict[str, Path]) -> None:
    model = load(models["qwen2"], quantization="fp8")

    layers = quantized_layers(model)
    assert sorted({name.rsplit(".", 1)[-1] for name in layers}) == [
        "down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert len(layers) == 4 * model.config.num_hidden_layers
    assert model.config.quantization.method == "fp8"
    for name, param in model.named_parameters():
        expected = (torch.float8_e4m3fn if name.endswith(".weight") and name.rsplit(
            ".", 1)[0] in layers else torch.float32)
        assert param.dtype == expected, name  # embeddings, norms, biases, lm_head unquantized


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fp8_logits_are_hf_on_the_dequantized_weights(models: dict[str, Path], arch: str,
                                                      tmp_path: Path) -> None:
    """The dequantizing path is exact: the FP8 model's logits are HF transformers' on the
    dequantized weights, to float32 accuracy (the bar the unquantized models meet)."""
    ours = load(models[arch], quantization="fp8")
    theirs = AutoModelForCausalLM.from_pretrained(models[arch], dtype=torch.float32).eval()
    hf_state = theirs.state_dict()
    for name, layer in quantized_layers(ours).items():
        weight = layer.dequantized_weight()
        parent = name.rpartition(".")[0]
        for shard, rows in getattr(layer, "shard_rows", {name.rpartition(".")[2]: slice(None)}
                                   ).items():
            hf_state[f"{parent}.{shard}.weight"].copy_(weight[rows])
    config = ModelConfig.from_pretrained(models[arch])
    tokens = random_tokens(config.vocab_size, 20, seed=3)

    expected = theirs(torch.tensor([tokens])).logits[0].detach()

    torch.testing.assert_close(prefill_logits(ours, config, tokens), expected,
                               atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("arch", "dtype"), [("llama", "float32"), ("qwen2", "float32"),
                                             ("qwen3", "float32"), ("llama", "bfloat16")])
def test_fp8_logits_stay_within_the_error_e4m3_implies(models: dict[str, Path], arch: str,
                                                       dtype: str) -> None:
    """Relative logit error of the FP8 model against the unquantized one, same dtype.

    The bound, from e4m3's precision: each quantized GEMM's output carries an independent,
    zero-mean relative error of RMS eps = 2^-4 sqrt(1 / (8 ln 2)) = 0.0265 (3 mantissa bits;
    derived in common.e4m3_rms_error and checked in test_fp8_numerics). A token's logits depend
    on G = 4 per layer of those GEMMs (qkv, o, gate_up, down), whose errors add in quadrature
    along the residual stream: expected relative error eps * sqrt(G) (0.075 for two layers).
    That is a first-order estimate, not a worst case: the network's nonlinearities can amplify
    or damp it per token. Measured on 12 random tiny models (3 archs x 4 seeds, 48 tokens): the
    mean over tokens is 0.83-1.15 x the estimate, the worst token 1.4-2.3 x. The test allows a
    mean of 1.5 x and a worst token of 3.5 x (margins of 1.3 and 1.5 over the worst seen), and
    requires a mean of at least 0.5 x (the weights really are rounded). Two mantissa bits
    (e5m2) measure a mean of 1.65-2.2 x, so the bound tells the formats apart.
    """
    config = ModelConfig.from_pretrained(models[arch])
    tokens = random_tokens(config.vocab_size, PROMPT_LEN, seed=5)
    reference = prefill_logits(load(models[arch], dtype=dtype), config, tokens)

    logits = prefill_logits(load(models[arch], dtype=dtype, quantization="fp8"), config, tokens)

    estimate = e4m3_rms_error() * math.sqrt(4 * config.num_hidden_layers)
    errors = relative_errors(logits, reference)
    assert 0.5 * estimate <= errors.mean() <= 1.5 * estimate
    assert errors.max() <= 3.5 * estimate


@torch.no_grad()
def test_the_bound_fails_a_format_with_one_mantissa_bit_less(models: dict[str, Path]) -> None:
    """The same per-row scheme in e5m2 (2 mantissa bits, twice e4m3's rounding error) breaks
    the mean bound above: the bound measures the format's precision, so the test can fail."""
    config = ModelConfig.from_pretrained(models["llama"])
    tokens = random_tokens(config.vocab_size, PROMPT_LEN, seed=5)
    reference = prefill_logits(load(models["llama"]), config, tokens)
    coarse = load(models["llama"])
    for name, module in coarse.named_modules():
        if name.startswith("model.layers.") and isinstance(module, torch.nn.Linear):
            scale = module.weight.abs().amax(dim=-1, keepdim=True) / torch.finfo(
                torch.float8_e5m2).max
            module.weight.copy_((module.weight / scale).to(torch.float8_e5m2).float() * scale)

    errors = relative_errors(prefill_logits(coarse, config, tokens), reference)

    assert errors.mean() > 1.5 * e4m3_rms_error() * math.sqrt(4 * config.num_hidden_layers)


def test_a_prequantized_checkpoint_loads_like_quantizing_at_load(
        models: dict[str, Path]) -> None:
    """make-model's FP8 checkpoint (quantized with the worker's own code from the same float
    weights) loads bit for bit like the float checkpoint with --quantization fp8, and gives
    the same logits bit for bit; it needs no flag (config.json says fp8)."""
    config = ModelConfig.from_pretrained(models["qwen2-fp8"])
    checkpoint = load_file(models["qwen2-fp8"] / "model.safetensors")
    assert checkpoint["model.layers.0.self_attn.k_proj.weight"].dtype == torch.float8_e4m3fn
    assert checkpoint["model.layers.0.self_attn.k_proj.weight_scale"].shape == (32, 1)
    assert config.quantization is not None and config.quantization.prequantized

    prequantized = load(models["qwen2-fp8"])
    at_load = load(models["qwen2"], quantization="fp8")

    assert_bitwise_equal(prequantized, at_load)
    tokens = random_tokens(config.vocab_size, 16, seed=7)
    assert torch.equal(prefill_logits(prequantized, config, tokens),
                       prefill_logits(at_load, config, tokens))
    assert_bitwise_equal(load(models["qwen2-fp8"], quantization="fp8"), prequantized)


def test_per_tensor_scales_and_static_input_scales_load(models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """vLLM's usual FP8 layout: one scale per tensor (shape []), `input_scale` beside it. The
    per-tensor scale of each shard fills that shard's rows of the fused layer's scales."""
    source = models["llama-fp8"]
    for file in source.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    float_weights = load_file(models["llama"] / "model.safetensors")
    tensors = load_file(source / "model.safetensors")
    for name in [n for n in tensors if n.endswith("_proj.weight")]:
        w = float_weights[name]
        scale = w.abs().max() / 448
        tensors[name] = (w / scale).to(torch.float8_e4m3fn)
        tensors[f"{name}_scale"] = scale.reshape(())
        tensors[name.replace(".weight", ".input_scale")] = torch.tensor(0.01)
    save_file(tensors, tmp_path / "model.safetensors")
    config_file = tmp_path / "config.json"
    config_json = json.loads(config_file.read_text())
    config_json["quantization_config"]["activation_scheme"] = "static"
    config_file.write_text(json.dumps(config_json))

    model = load(tmp_path)

    qkv = model.model.layers[1].self_attn.qkv_proj
    for shard, rows in qkv.shard_rows.items():
        name = f"model.layers.1.self_attn.{shard}.weight"
        assert (qkv.weight_scale[rows] == tensors[f"{name}_scale"]).all()
        restored = qkv.dequantized_weight()[rows]
        torch.testing.assert_close(restored, tensors[name].float() * tensors[f"{name}_scale"])


def test_ignored_layers_stay_unquantized(models: dict[str, Path], tmp_path: Path) -> None:
    for file in models["llama-fp8"].iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = load_file(models["llama"] / "model.safetensors")[name]
    del tensors[f"{name}_scale"]
    save_file(tensors, tmp_path / "model.safetensors")
    config_json = json.loads((tmp_path / "config.json").read_text())
    config_json["quantization_config"]["ignored_layers"] = ["lm_head", "model.layers.1.mlp.down_proj"]
    (tmp_path / "config.json").write_text(json.dumps(config_json))

    model = load(tmp_path)

    assert type(model.model.layers[1].mlp.down_proj) is torch.nn.Linear
    assert isinstance(model.model.layers[0].mlp.down_proj, QuantLinear)
    assert torch.equal(model.model.layers[1].mlp.down_proj.weight, tensors[name])


def test_a_float_weight_where_fp8_is_declared_is_named(models: dict[str, Path],
                                                       tmp_path: Path) -> None:
    for file in models["llama-fp8"].iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.0.self_attn.v_proj.weight"
    tensors[name] = tensors[name].float()
    del tensors["model.layers.0.mlp.up_proj.weight_scale"]
    save_file(tensors, tmp_path / "model.safetensors")

    with pytest.raises(WeightLoadError) as error:
        load(tmp_path)

    assert "missing: model.layers.0.mlp.up_proj.weight_scale" in str(error.value)
    assert f"{name} (checkpoint dtype torch.float32, model torch.float8_e4m3fn)" in str(
        error.value)


@pytest.mark.parametrize(("quantization_config", "match"), [
    ({"quant_method": "awq"}, "'awq' is not supported"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise"),
])
def test_unsupported_checkpoint_quantization_is_refused(models: dict[str, Path], tmp_path: Path,
                                                        quantization_config: dict,
                                                        match: str) -> None:
    config_json = json.loads((models["llama"] / "config.json").read_text())
    config_json["quantization_config"] = quantization_config
    (tmp_path / "config.json").write_text(json.dumps(config_json))

    with pytest.raises(UnsupportedModelError, match=match):
        ModelConfig.from_pretrained(tmp_path)


def test_dummy_fp8_weights_are_the_dummy_weights_quantized(models: dict[str, Path]) -> None:
    """Benchmarks at real sizes: dummy FP8 weights are drawn layer by layer (the bf16 model is
    never whole in memory), and are exactly the bf16 dummy model's weights, quantized."""
    dummy = load(models["llama"], load_format="dummy", dtype="bfloat16")
    dummy_fp8 = load(models["llama"], load_format="dummy", dtype="bfloat16",
                     quantization="fp8")

    fp8_state = dummy_fp8.state_dict()
    for name, layer in quantized_layers(dummy_fp8).items():
        q, scale = quantize_rows(dummy.get_submodule(name).weight)
        assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)), name
        assert torch.equal(layer.weight_scale, scale), name
    for name, tensor in dummy.state_dict().items():
        if name in fp8_state and fp8_state[name].dtype != torch.float8_e4m3fn:
            assert torch.equal(tensor, fp8_state[name]), name


def test_the_engine_generates_with_a_prequantized_checkpoint(models: dict[str, Path]) -> None:
    engine = Engine(WorkerConfig(model_path=str(models["llama-fp8"]), device="cpu"))
    body = {"text": "The quick brown fox", "max_new_tokens": 12, "temperature": 0,
            "ignore_eos": True}

    first, again = engine.generate([body, body])

    assert isinstance(engine.runner.model.model.layers[0].self_attn.o_proj, QuantLinear)
    assert len(first.token_ids) == 12 and first.token_ids == again.token_ids
    assert first.text == engine.tokenizer.decode(first.token_ids)
    assert not engine.has_work


def test_the_engine_quantizes_at_load_with_the_flag(models: dict[str, Path]) -> None:
    """--quantization fp8 on a float checkpoint gives the engine of the prequantized one."""
    flagged = Engine(WorkerConfig(model_path=str(models["llama"]), device="cpu",
                                  quantization="fp8"))
    if flagged.runner.model.config.quantization is None:
        pytest.skip("ModelRunner does not pass WorkerConfig.quantization to load_model yet")
    prequantized = Engine(WorkerConfig(model_path=str(models["llama-fp8"]), device="cpu"))
    body = {"input_ids": [5, 17, 2, 99], "max_new_tokens": 10, "temperature": 0,
            "ignore_eos": True}

    [a], [b] = flagged.generate([body]), prequantized.generate([body])

    assert a.token_ids == b.token_ids
