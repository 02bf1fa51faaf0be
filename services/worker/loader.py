"""Builds a model from its config and fills its weights: from safetensors, or random (dummy).

The model is constructed directly on the target device in the target dtype, so an 8B dummy
model on a GPU never passes through a float32 or host copy. Checkpoint tensors are copied into
the parameters one at a time, so host memory holds at most one tensor beyond the model.

Checkpoints are HF's, by HF's names. Most parameters have their HF name; the rows of a fused
projection (`FusedLinear`, e.g. `self_attn.qkv_proj`) are filled from the HF tensors of the
shards it declares (`self_attn.q_proj`, `k_proj`, `v_proj`), each into its own block of rows.
Every mismatch is reported by the HF name.

Quantized layers (`--quantization`, or a checkpoint's `quantization_config`) are built in their
storage format from the start and filled one checkpoint tensor at a time: a float weight is
quantized as it is copied in, so the unquantized model never exists in memory (a 70B model in
FP8 loads on a card that could not hold it in bf16). Each layer's method supplies the sinks
(models/sinks.py) that load its tensors.

KV-cache scales (`self_attn.k_scale` and the like, kv_scales.py) are no weights of the model:
the weight pass skips them and `load_kv_scales` hands them out as a `KVScales` for the KV pool,
read from the checkpoint (or `--quantization-param-path`) when the cache is FP8.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from radixmesh.services.worker.checkpoint_sinks import checkpoint_sinks
from radixmesh.services.worker.dummy_weights import DUMMY_SEED, init_dummy_weights
from radixmesh.services.worker.kv_pool import KV_CACHE_DTYPES
from radixmesh.services.worker.kv_scales import KVScales, is_kv_scale_name, read_checkpoint_scales
from radixmesh.services.worker.kv_scales_file import read_scales_file
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.models.registry import model_class
from radixmesh.services.worker.models.sinks import CutSink, Sink
from radixmesh.services.worker.parallel.tensor_parallel import SINGLE, TensorParallel
from radixmesh.services.worker.quantization.config import with_flag
from radixmesh.services.worker.quantization.linear import QuantLinear

logger = logging.getLogger(__name__)

LOAD_FORMATS = ("auto", "dummy")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Checkpoint entries that are derived buffers, not weights: we rebuild them from the config.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached")


class WeightLoadError(ValueError):
    """The checkpoint's tensors do not match the model's parameters."""


def resolve_dtype(name: str, config: ModelConfig) -> torch.dtype:
    """`auto` is the checkpoint's dtype (float32 when the config names none)."""
    if name == "auto":
        name = config.dtype or "float32"
    try:
        return DTYPES[name]
    except KeyError:
        known = ", ".join(["auto", *DTYPES])
        raise ValueError(f"unsupported dtype {name!r}; supported: {known}") from None


def load_model(config: ModelConfig, model_path: str | Path, load_format: str = "auto",
               dtype: str = "auto", device: torch.device | str = "cpu",
               seed: int = DUMMY_SEED, quantization: str | None = None,
               parallel: TensorParallel = SINGLE) -> nn.Module:
    """The model for `config` in eval mode with gradients off, its weights in place (dummy
    weights drawn from `seed`). `quantization` is `--quantization`: a float checkpoint is
    quantized at load; a quantized one (config.quantization) runs with its own method.
    The model's `config.quantization` says what it runs with. `parallel`: the tensor-parallel
    rank to build, holding (and reading) only its share of each tensor."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unsupported load format {load_format!r}; supported: {LOAD_FORMATS}")
    config = dataclasses.replace(config, quantization=with_flag(config.quantization,
                                                                quantization))
    with torch.device(device), _default_dtype(resolve_dtype(dtype, config)):
        model = model_class(config)(config, parallel)
    model.eval().requires_grad_(False)
    with torch.no_grad():
        if load_format == "dummy":
            init_dummy_weights(model, seed)
        else:
            load_safetensors(model, Path(model_path), config.tie_word_embeddings)
    return model


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_safetensors(model: nn.Module, model_path: Path, tie_word_embeddings: bool) -> None:
    """Loads every checkpoint tensor through its sink (see `checkpoint_sinks`).

    Raises WeightLoadError naming every missing, unexpected or mis-shaped tensor by its
    checkpoint name.
    """
    sinks = checkpoint_sinks(model)
    ignored = IGNORED_SUFFIXES + _quantization_ignored_suffixes(model)
    seen: set[str] = set()
    unexpected: list[str] = []
    misshaped: list[str] = []
    for file in checkpoint_files(model_path):
        with safe_open(file, framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.endswith(ignored) or is_kv_scale_name(name):
                    continue
                if name == "lm_head.weight" and tie_word_embeddings:
                    continue  # HF ties over it too: the embedding is the output matrix
                sink = sinks.get(name)
                if sink is None:
                    unexpected.append(name)
                    continue
                seen.add(name)
                tensor, sink, problem = _read(reader, name, sink)
                problem = problem or sink.mismatch(tensor)
                if problem is not None:
                    misshaped.append(f"{name} ({problem})")
                    continue
                sink.load(tensor)
    missing = sorted(set(sinks) - seen)
    if missing or unexpected or misshaped:
        raise WeightLoadError(_mismatch_message(model_path, missing, unexpected, misshaped))


def load_kv_scales(config: ModelConfig, model_path: str | Path, kv_cache_dtype: str,
                   load_format: str = "auto", param_path: str | None = None,
                   parallel: TensorParallel = SINGLE) -> KVScales:
    """The KV pool's per-layer scales for this rank: 1.0 unless the cache is FP8 and the
    scales file (`param_path`, which wins) or the checkpoint gives them. With an FP8 cache, bad
    scales raise KVScaleError (kv_scales.py says which). A bf16/fp16 cache has no use for
    scales: the checkpoint's are not read, and a scales file is only warned about."""
    layers = config.num_hidden_layers
    if KV_CACHE_DTYPES.get(kv_cache_dtype) is None:
        if param_path is not None:
            logger.warning("--quantization-param-path %s is not used: KV-cache scales apply "
                           "to an FP8 cache (--kv-cache-dtype fp8_e4m3 or fp8_e5m2)", param_path)
        return KVScales.unit(layers)
    if param_path is not None:
        scales = read_scales_file(param_path, layers, config.model_type, parallel.rank,
                                  parallel.size)
    elif load_format == "dummy":
        scales = None
    else:
        scales = read_checkpoint_scales(checkpoint_files(Path(model_path)), layers)
    if scales is None:
        logger.info("FP8 KV cache with scales of 1.0: none given")
        return KVScales.unit(layers)
    logger.info("FP8 KV cache scales %s", scales.describe())
    return scales


def _read(reader, name: str, sink: Sink) -> tuple[torch.Tensor, Sink, str | None]:
    """(the tensor `sink` takes, the sink to load it with, why it cannot): a tensor-parallel
    rank reads only its cut from the file, never the whole tensor."""
    if not isinstance(sink, CutSink):
        return reader.get_tensor(name), sink, None
    part = reader.get_slice(name)
    problem = sink.shape_mismatch(tuple(part.get_shape()))
    if problem is not None:
        return torch.empty(0), sink, problem
    return part[sink.cut.index(len(part.get_shape()))], sink.inner, None


def _quantization_ignored_suffixes(model: nn.Module) -> tuple[str, ...]:
    methods = {module.method.__class__: module.method for module in model.modules()
               if isinstance(module, QuantLinear)}
    return tuple(suffix for method in methods.values() for suffix in method.ignored_suffixes)


def checkpoint_files(model_path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: those its index names, else every one there."""
    index = model_path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_path / name for name in sorted(set(weight_map.values()))]
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {model_path}")
    return files


def _mismatch_message(model_path: Path, missing: list[str], unexpected: list[str],
                      misshaped: list[str]) -> str:
    lines = [f"checkpoint {model_path} does not match the model:"]
    for title, names in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", misshaped)):
        if names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)"
                                             if len(names) > 20 else "")
            lines.append(f"  {title}: {shown}")
    return "\n".join(lines)
