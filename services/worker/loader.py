"""Builds a model from its config and fills its weights: from safetensors, or random (dummy).

The model is constructed directly on the target device in the target dtype, so an 8B dummy
model on a GPU never passes through a float32 or host copy. Checkpoint tensors are copied into
the parameters one at a time, so host memory holds at most one tensor beyond the model.

Checkpoints are HF's, by HF's names. Most parameters have their HF name; the rows of a fused
projection (`FusedLinear`, e.g. `self_attn.qkv_proj`) are filled from the HF tensors of the
shards it declares (`self_attn.q_proj`, `k_proj`, `v_proj`), each into its own block of rows.
Every mismatch is reported by the HF name.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.models.fused_linear import FusedLinear
from radixmesh.services.worker.models.registry import model_class

LOAD_FORMATS = ("auto", "dummy")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DUMMY_SEED = 0
DUMMY_STD = 0.02
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
               seed: int = DUMMY_SEED) -> nn.Module:
    """The model for `config` in eval mode with gradients off, its weights in place (dummy
    weights drawn from `seed`)."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unsupported load format {load_format!r}; supported: {LOAD_FORMATS}")
    with torch.device(device), _default_dtype(resolve_dtype(dtype, config)):
        model = model_class(config)(config)
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


def init_dummy_weights(model: nn.Module, seed: int = DUMMY_SEED) -> None:
    """Deterministic random weights: norms at 1, biases at 0, the rest N(0, DUMMY_STD).

    Meant for speed benchmarks at real sizes; the small std keeps bf16 activations finite.
    """
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith(".bias"):
            param.zero_()
        else:
            param.normal_(0.0, DUMMY_STD, generator=generator)


def load_safetensors(model: nn.Module, model_path: Path, tie_word_embeddings: bool) -> None:
    """Copies every checkpoint tensor into its target (see `checkpoint_targets`).

    Raises WeightLoadError naming every missing, unexpected or mis-shaped tensor by its
    checkpoint name.
    """
    targets = checkpoint_targets(model)
    seen: set[str] = set()
    unexpected: list[str] = []
    misshaped: list[str] = []
    for file in checkpoint_files(model_path):
        with safe_open(file, framework="pt", device="cpu") as reader:
            for name in reader.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.endswith(IGNORED_SUFFIXES):
                    continue
                if name == "lm_head.weight" and tie_word_embeddings:
                    continue  # HF ties over it too: the embedding is the output matrix
                target = targets.get(name)
                if target is None:
                    unexpected.append(name)
                    continue
                seen.add(name)
                tensor = reader.get_tensor(name)
                if tensor.shape != target.shape:
                    misshaped.append(f"{name} (checkpoint {tuple(tensor.shape)}, "
                                     f"model {tuple(target.shape)})")
                    continue
                target.copy_(tensor)
    missing = sorted(set(targets) - seen)
    if missing or unexpected or misshaped:
        raise WeightLoadError(_mismatch_message(model_path, missing, unexpected, misshaped))


def checkpoint_targets(model: nn.Module) -> dict[str, torch.Tensor]:
    """HF checkpoint name -> the tensor that checkpoint tensor is copied into.

    A parameter under its own name, except in a FusedLinear: there each declared shard's
    name (`...self_attn.k_proj.weight`) maps to a view of the shard's rows of the fused
    parameter (`...self_attn.qkv_proj.weight`). The keys are exactly the tensors a complete
    checkpoint holds (tied ones left out, as HF leaves them out).
    """
    targets: dict[str, torch.Tensor] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not isinstance(module, FusedLinear):
                targets[_join(module_name, param_name)] = param.detach()
                continue
            parent = module_name.rpartition(".")[0]
            for shard, rows in module.shard_rows.items():
                targets[_join(parent, shard, param_name)] = param.detach()[rows]
    return targets


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


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
