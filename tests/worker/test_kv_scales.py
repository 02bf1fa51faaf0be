"""FP8 KV-cache scales from the checkpoint: every spelling checkpoints use is read, bad scales
are a clear error at load, the scales reach the KV pool through the engine's worker and keep a
model whose keys reach thousands (and values stay below e4m3's subnormals) accurate, where
scales of 1.0 ruin it; `--kv-cache-dtype auto` ignores them; and the scales enter the page keys'
namespace, so pages stored with other scales never share a key."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.kv_scales import (
    KVScaleError,
    KVScales,
    is_kv_scale_name,
    read_checkpoint_scales,
)
from radixmesh.services.worker.loader import load_kv_scales
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.shared.mesh_info import worker_key_namespace
from radixmesh.shared.page_keys import weights_fingerprint
from tests.quantization.common import e4m3_rms_error, random_tokens, relative_errors

# Per layer: keys blown up past e4m3's 448 (the tiny model's reach ~3.2), values shrunk below
# its smallest subnormal (2^-9); q_proj and o_proj undo the factors, so the model computes the
# same function and only an FP8 cache can tell.
K_GAINS = (1000.0, 300.0)
V_GAINS = (1e-4, 3e-4)
CALIBRATION_MARGIN = 2.0  # the calibrated amax / 448, doubled: headroom for unseen prompts
PROMPTS, PROMPT_LEN = 16, 24
GPU_PROMPTS = 8


def attn(layer: int, suffix: str) -> str:
    return f"model.layers.{layer}.self_attn.{suffix}"


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rewrite_weights(model_dir: Path, update: dict[str, torch.Tensor]) -> None:
    file = model_dir / "model.safetensors"
    tensors = load_file(file)
    tensors.update(update)
    save_file(tensors, file, metadata={"format": "pt"})


def first_logits(model_dir: Path, kv_cache_dtype: str) -> tuple[torch.Tensor, Engine]:
    """The next-token logits after each of PROMPTS prompts ([PROMPTS, vocab], float32), from a
    prefill through the engine's worker (the torch backend reads back every stored token)."""
    engine = Engine(WorkerConfig(model_path=str(model_dir), device="cpu",
                                 kv_cache_dtype=kv_cache_dtype))
    rows: list[torch.Tensor] = []
    engine.runner.logits_observer = lambda rids, logits: rows.append(logits.float().cpu())
    engine.generate([{"input_ids": random_tokens(engine.info.vocab_size, PROMPT_LEN, seed=s),
                      "max_new_tokens": 1, "temperature": 0} for s in range(PROMPTS)])
    return torch.cat(rows), engine


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return amplified_models(tmp_path_factory.mktemp("kv-scales"))


def amplified_models(root: Path, **shape: int) -> dict[str, Path]:
    """`base`: a tiny Llama (of `shape`); `amplified`: the same function with huge keys and
    tiny values; `scaled`: `amplified` with calibrated k_scale / v_scale in its safetensors."""
    base = make_model(root / "base", "llama", seed=1, **shape)
    amplified = copy_model(base, root / "amplified")
    weights = load_file(base / "model.safetensors")
    gains: dict[str, torch.Tensor] = {}
    for layer, (k_gain, v_gain) in enumerate(zip(K_GAINS, V_GAINS, strict=True)):
        for name, factor in (("k_proj", k_gain), ("q_proj", 1 / k_gain),
                             ("v_proj", v_gain), ("o_proj", 1 / v_gain)):
            gains[attn(layer, f"{name}.weight")] = weights[attn(layer, f"{name}.weight")] * factor
    rewrite_weights(amplified, gains)
    scaled = copy_model(amplified, root / "scaled")
    rewrite_weights(scaled, calibrate(amplified))
    return {"base": base, "amplified": amplified, "scaled": scaled}


def calibrate(model_dir: Path) -> dict[str, torch.Tensor]:
    """k_scale / v_scale per layer as calibration tools make them: amax / 448 over prompts
    other than the test's, with a margin."""
    engine = Engine(WorkerConfig(model_path=str(model_dir), device="cpu"))
    engine.generate([{"input_ids": random_tokens(engine.info.vocab_size, 64, seed=100 + s),
                      "max_new_tokens": 1} for s in range(4)])
    pool = engine.runner.kv_pool
    scales = {}
    for layer in range(pool.num_layers):
        for which, buffer in (("k", pool.keys(layer)), ("v", pool.values(layer))):
            amax = buffer[1:].abs().max()  # page 0 is padding
            scales[attn(layer, f"{which}_scale")] = (amax * CALIBRATION_MARGIN / 448).float()
    return scales


def test_checkpoint_scales_reach_the_pool_and_keep_the_logits_accurate(
        models: dict[str, Path]) -> None:
    """Relative logit error of FP8 caches against the unquantized cache of the same model.

    With the calibrated scales the stored keys and values sit in e4m3's normal range, where its
    relative RMS rounding error is eps = 0.0265 (tests/quantization/common.e4m3_rms_error): two
    rounded tensors per layer give about eps * sqrt(2 L) = 0.053 (test_kv_cache_dtype derives
    it), which the mean error must stay within 1.5x of. With scales of 1.0 the keys clamp at
    448 and the values round to zero: the error must be many times that.
    """
    reference, auto = first_logits(models["scaled"], "auto")
    base_logits, _ = first_logits(models["base"], "auto")
    assert relative_errors(reference, base_logits).max() < 1e-4  # the same function
    checkpoint = load_file(models["scaled"] / "model.safetensors")

    logits, engine = first_logits(models["scaled"], "fp8_e4m3")
    pool = engine.runner.kv_pool
    for layer in range(pool.num_layers):
        assert pool.k_scales[layer] == checkpoint[attn(layer, "k_scale")].item()
        assert pool.v_scales[layer] == checkpoint[attn(layer, "v_scale")].item()
        assert pool.k_scales[layer] > 1 > 1e-3 > pool.v_scales[layer]
    unit_logits, unit_engine = first_logits(models["amplified"], "fp8_e4m3")
    assert set(unit_engine.runner.kv_pool.k_scales) == {1.0}

    estimate = e4m3_rms_error() * math.sqrt(2 * pool.num_layers)
    errors = relative_errors(logits, reference)
    assert 0.5 * estimate <= errors.mean() <= 1.5 * estimate  # measured ~0.75x
    assert errors.max() <= 3.5 * estimate
    assert relative_errors(unit_logits, reference).mean() > 5 * estimate  # ~20x

    # The scales name the pages: other scales, other keys; the bf16 cache keeps its own.
    spaces = {name: worker_key_namespace(e.info) for name, e in
              (("fp8", engine), ("unit", unit_engine), ("auto", auto))}
    assert spaces["fp8"].root() != spaces["auto"].root()
    assert spaces["fp8"].weights_fingerprint != weights_fingerprint(models["scaled"], None)
    assert auto.info.weights_fingerprint == weights_fingerprint(models["scaled"], None)
    assert unit_engine.info.weights_fingerprint == weights_fingerprint(models["amplified"], None)


def test_auto_ignores_the_scales_without_a_word(models: dict[str, Path],
                                                caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="radixmesh"):
        engine = Engine(WorkerConfig(model_path=str(models["scaled"]), device="cpu"))
    assert set(engine.runner.kv_pool.k_scales + engine.runner.kv_pool.v_scales) == {1.0}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "scale" not in caplog.text
    config = ModelConfig.from_pretrained(models["scaled"])
    assert load_kv_scales(config, models["scaled"], "auto") == KVScales.unit(2)
    assert load_kv_scales(config, models["scaled"], "fp8_e5m2").k[0] > 1  # both FP8 formats


def test_recalibrated_scales_change_the_namespace_where_the_files_cannot(
        models: dict[str, Path], tmp_path: Path) -> None:
    """Scalars of the same dtype leave every file size, and so the checkpoint fingerprint, as
    it was; the scales' digest tells the two apart. Unit scales written out change nothing."""
    config = ModelConfig.from_pretrained(models["scaled"])
    recalibrated = copy_model(models["scaled"], tmp_path / "recalibrated")
    rewrite_weights(recalibrated, {attn(0, "k_scale"): torch.tensor(9.5)})
    assert weights_fingerprint(recalibrated, None) == weights_fingerprint(models["scaled"], None)
    digests = {load_kv_scales(config, path, "fp8_e4m3").digest
               for path in (models["scaled"], recalibrated)}
    assert len(digests) == 2 and None not in digests

    unit = copy_model(models["base"], tmp_path / "unit")
    rewrite_weights(unit, {attn(layer, f"{which}_scale"): torch.tensor(1.0)
                           for layer in range(2) for which in "kv"})
    assert load_kv_scales(config, unit, "fp8_e4m3").digest is None


def write_scales(path: Path, tensors: dict[str, torch.Tensor]) -> list[Path]:
    save_file(tensors, path)
    return [path]


@pytest.mark.parametrize("tensors,expected_k,expected_v", [
    ({attn(0, "kv_scale"): torch.tensor(0.5), attn(1, "kv_scale"): torch.tensor([2.0])},
     (0.5, 2.0), (0.5, 2.0)),
    ({attn(layer, f"{w}_proj.{w}_scale"): torch.tensor(1.5 + layer + (w == "v"))
      for layer in range(2) for w in "kv"}, (1.5, 2.5), (2.5, 3.5)),
    ({attn(layer, f"{w}_proj.output_scale"): torch.tensor(0.25, dtype=torch.bfloat16)
      for layer in range(2) for w in "kv"}, (0.25, 0.25), (0.25, 0.25)),
    ({**{attn(layer, f"{w}_scale"): torch.tensor(3.0) for layer in range(2) for w in "kv"},
      attn(0, "kv_scale"): torch.tensor(3.0)}, (3.0, 3.0), (3.0, 3.0)),  # agreeing spellings
], ids=["autofp8-kv_scale", "modelopt", "quark-output_scale", "two-spellings-agree"])
def test_every_spelling_of_the_scales_is_read(tmp_path: Path, tensors: dict[str, torch.Tensor],
                                              expected_k: tuple, expected_v: tuple) -> None:
    assert all(is_kv_scale_name(name) for name in tensors)
    scales = read_checkpoint_scales(write_scales(tmp_path / "s.safetensors", tensors), 2)
    assert scales is not None and (scales.k, scales.v) == (expected_k, expected_v)
    assert scales.digest is not None


def full_set(value: float = 0.5) -> dict[str, torch.Tensor]:
    return {attn(layer, f"{w}_scale"): torch.tensor(value) for layer in range(2) for w in "kv"}


@pytest.mark.parametrize("change,message", [
    ({attn(1, "k_scale"): torch.tensor(-0.5)}, r"layers\.1\.self_attn\.k_scale is -0\.5.*> 0"),
    ({attn(0, "v_scale"): torch.tensor(float("nan"))}, "v_scale is nan; .*finite"),
    ({attn(0, "k_scale"): torch.tensor(float("inf"))}, "k_scale is inf; .*finite"),
    ({attn(1, "k_scale"): None}, r"some layers but not all \(missing 1 of 4: 1\.k\)"),
    ({attn(2, "k_scale"): torch.tensor(0.5)}, r"layers \[2\], beyond the model's 2 layers"),
    ({attn(0, "k_scale"): torch.full((2,), 0.5)}, r"shape \(2,\): per-head .* not supported"),
    ({attn(0, "k_scale"): torch.tensor(1, dtype=torch.int32)}, "dtype torch.int32"),
    ({attn(0, "kv_scale"): torch.tensor(0.7)}, "conflicting KV-cache scales for layer 0"),
], ids=["negative", "nan", "inf", "missing-layer", "extra-layer", "per-head", "int", "conflict"])
def test_bad_scales_are_a_clear_error(tmp_path: Path, change: dict, message: str) -> None:
    tensors = {**full_set(), **change}
    tensors = {name: t for name, t in tensors.items() if t is not None}
    with pytest.raises(KVScaleError, match=message):
        read_checkpoint_scales(write_scales(tmp_path / "s.safetensors", tensors), 2)


def test_a_bad_scale_stops_the_worker_before_its_weights_load(models: dict[str, Path],
                                                              tmp_path: Path) -> None:
    broken = copy_model(models["base"], tmp_path / "broken")
    rewrite_weights(broken, {**full_set(), attn(1, "v_scale"): torch.tensor(float("nan"))})
    with pytest.raises(KVScaleError, match=r"layers\.1\.self_attn\.v_scale is nan"):
        Engine(WorkerConfig(model_path=str(broken), device="cpu", kv_cache_dtype="fp8_e4m3"))
    Engine(WorkerConfig(model_path=str(broken), device="cpu"))  # auto never reads them


def test_a_checkpoint_without_scales_and_dummy_weights_get_unit_scales(
        models: dict[str, Path]) -> None:
    config = ModelConfig.from_pretrained(models["base"])
    for load_format in ("auto", "dummy"):
        assert load_kv_scales(config, models["base"], "fp8_e4m3", load_format) == KVScales.unit(2)
    # Dummy weights never read the checkpoint, scales included.
    assert load_kv_scales(config, models["scaled"], "fp8_e4m3", "dummy").is_unit


def test_the_pool_refuses_scales_it_would_not_apply() -> None:
    with pytest.raises(ValueError, match="need an FP8 cache"):
        KVPool(2, 1, 2, 1, 8, torch.bfloat16, "cpu", k_scales=[1.0, 2.0])
    KVPool(2, 1, 2, 1, 8, torch.bfloat16, "cpu", k_scales=[1.0, 1.0])


def gpu_logits(model_dir: Path, **flags: object) -> torch.Tensor:
    """Every sampled row's logits of a few greedy requests on the GPU (prefill, then decode
    steps replayed from CUDA graphs)."""
    engine = Engine(WorkerConfig(model_path=str(model_dir), device="cuda", page_size=16,
                                 max_total_tokens=4096, cuda_graph_max_bs=4, **flags))
    rows: list[torch.Tensor] = []
    engine.runner.logits_observer = lambda rids, logits: rows.append(logits.float().cpu())
    engine.generate([{"input_ids": random_tokens(engine.info.vocab_size, 100, seed=s),
                      "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}
                     for s in range(GPU_PROMPTS)])
    return torch.cat(rows)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "flashinfer"])
def test_gpu_backends_apply_the_scales_as_the_torch_backend_does(tmp_path: Path,
                                                                 backend: str) -> None:
    """Triton folds the K scale into the softmax scale and the V scale into the output,
    FlashInfer takes both as arguments: with scales far from 1.0 their logits must agree with
    the torch backend's dequantized reads (the bytes stored are the same), and with the
    unquantized cache's within FP8's error; scales forced to 1.0 must not."""
    from radixmesh.services.worker.attention import ATTENTION_BACKENDS

    if backend not in ATTENTION_BACKENDS:
        pytest.skip(f"needs a CUDA device with {backend}")
    # FlashInfer's FP8 kernels need heads of 64.
    models = amplified_models(tmp_path, hidden_size=256, num_heads=4, num_kv_heads=2)
    fp8 = dict(kv_cache_dtype="fp8_e4m3", dtype="bfloat16")
    expected = gpu_logits(models["scaled"], attention_backend="torch", **fp8)
    got = gpu_logits(models["scaled"], attention_backend=backend, **fp8)
    assert relative_errors(got, expected).max() < 2e-2
    # Against the bf16 cache, the prefill rows only: greedy decodes may part ways on a tie.
    prefill = slice(0, GPU_PROMPTS)
    reference = gpu_logits(models["scaled"], attention_backend=backend, dtype="bfloat16")
    estimate = e4m3_rms_error() * math.sqrt(2 * 2)
    assert relative_errors(got[prefill], reference[prefill]).mean() <= 1.5 * estimate
    unit = gpu_logits(models["amplified"], attention_backend=backend, **fp8)
    assert relative_errors(unit[prefill], reference[prefill]).mean() > 5 * estimate
