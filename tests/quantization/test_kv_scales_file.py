"""`--quantization-param-path`: FP8 KV-cache scales from SGLang's JSON file, rank by rank,
checked as SGLang checks them, in place of the checkpoint's; unused (with a warning) for a
bf16/fp16 cache."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.kv_scales import KVScaleError, KVScales
from radixmesh.services.worker.kv_scales_file import read_scales_file
from radixmesh.services.worker.loader import load_kv_scales
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.tensor_parallel import TensorParallel


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama (2 layers) with k_scale / v_scale of 0.5 in its checkpoint."""
    path = make_model(tmp_path_factory.mktemp("kv-scales-file") / "llama", "llama", seed=1)
    tensors = load_file(path / "model.safetensors")
    for layer in range(2):
        for which in "kv":
            tensors[f"model.layers.{layer}.self_attn.{which}_scale"] = torch.tensor(0.5)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def scales_document(ranks: list[list[Any]], model_type: str | None = "llama",
                    dtype: str = "float8_e4m3fn") -> dict[str, Any]:
    table = {str(rank): {str(layer): scale for layer, scale in enumerate(scales)}
             for rank, scales in enumerate(ranks)}
    return {"model_type": model_type, "kv_cache": {"dtype": dtype, "scaling_factor": table}}


def write(path: Path, document: Any) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def test_each_rank_reads_its_own_scales_and_the_digest_covers_all(tmp_path: Path) -> None:
    file = write(tmp_path / "scales.json", scales_document([[0.25, 4.0], [0.5, 8.0]]))
    rank0 = read_scales_file(file, 2, "llama", tp_rank=0, tp_size=2)
    rank1 = read_scales_file(file, 2, "llama", tp_rank=1, tp_size=2)
    assert (rank0.k, rank0.v) == ((0.25, 4.0), (0.25, 4.0))  # one scale serves K and V
    assert (rank1.k, rank1.v) == ((0.5, 8.0), (0.5, 8.0))
    assert rank0.digest == rank1.digest is not None  # one namespace for the whole group
    other = write(tmp_path / "other.json", scales_document([[0.25, 4.0], [0.5, 9.0]]))
    assert read_scales_file(other, 2, "llama", tp_rank=0, tp_size=2).digest != rank0.digest
    unit = write(tmp_path / "unit.json", scales_document([[1, 1.0]], model_type=None))
    assert read_scales_file(unit, 2, "llama").digest is None


@pytest.mark.parametrize("document,message", [
    ("{not json", "not valid JSON"),
    ({"kv_cache": []}, "no kv_cache object"),
    (scales_document([[0.5, 0.5]], model_type="qwen2"), "scales of a 'qwen2' model"),
    (scales_document([[0.5, 0.5]], dtype="float8_e5m2"), "dtype is 'float8_e5m2'"),
    (scales_document([[0.5, 0.5], [0.5, 0.5]]), r"ranks \[0, 1\], but --tp-size is 1"),
    (scales_document([[0.5]]), r"missing \[1\]"),
    (scales_document([[0.5, 0.5, 0.5]]), r"beyond the model \[2\]"),
    (scales_document([[0.5, float("nan")]]), "layer 1's scale is nan"),
    (scales_document([[0.5, -2]]), "layer 1's scale is -2.0"),
    (scales_document([[0.5, "big"]]), "layer 1's scale 'big' is not a number"),
    ({"kv_cache": {"dtype": "float8_e4m3fn", "scaling_factor": {"a": {}}}}, "rank 'a'"),
], ids=["json", "shape", "model-type", "dtype", "tp-size", "missing", "extra", "nan",
        "negative", "string", "rank-key"])
def test_bad_files_are_a_clear_error(tmp_path: Path, document: Any, message: str) -> None:
    file = write(tmp_path / "scales.json", document)
    with pytest.raises(KVScaleError, match=f"--quantization-param-path {file}.*{message}"):
        read_scales_file(file, 2, "llama")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KVScaleError, match="missing.json: cannot read it"):
        read_scales_file(tmp_path / "missing.json", 2, "llama")


def test_the_file_wins_over_the_checkpoint_and_reaches_the_pool(model_dir: Path,
                                                                tmp_path: Path) -> None:
    file = write(tmp_path / "scales.json", scales_document([[0.125, 2.0]]))
    config = ModelConfig.from_pretrained(model_dir)
    from_checkpoint = load_kv_scales(config, model_dir, "fp8_e4m3")
    from_file = load_kv_scales(config, model_dir, "fp8_e4m3", param_path=str(file))
    assert from_checkpoint.k == (0.5, 0.5) and from_file.k == (0.125, 2.0)
    assert from_file.digest != from_checkpoint.digest
    # Dummy weights read no checkpoint, but a scales file still applies.
    assert load_kv_scales(config, model_dir, "fp8_e4m3", "dummy", str(file)) == from_file
    ranks = write(tmp_path / "ranks.json", scales_document([[0.125, 2.0], [0.25, 3.0]]))
    assert load_kv_scales(config, model_dir, "fp8_e4m3", param_path=str(ranks),
                          parallel=TensorParallel(1, 2)).k == (0.25, 3.0)

    engine = Engine(WorkerConfig(model_path=str(model_dir), device="cpu",
                                 kv_cache_dtype="fp8_e4m3", quantization_param_path=str(file)))
    assert engine.runner.kv_pool.k_scales == engine.runner.kv_pool.v_scales == [0.125, 2.0]
    done = engine.generate([{"input_ids": [5, 6, 7, 8], "max_new_tokens": 2}])
    assert len(done[0].token_ids) == 2


def test_a_bf16_cache_warns_that_the_file_is_unused(model_dir: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    file = write(tmp_path / "scales.json", "{not even json")
    config = ModelConfig.from_pretrained(model_dir)
    with caplog.at_level(logging.WARNING):
        scales = load_kv_scales(config, model_dir, "auto", param_path=str(file))
    assert scales == KVScales.unit(2)
    assert "--quantization-param-path" in caplog.text and "not used" in caplog.text
