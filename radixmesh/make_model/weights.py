"""Random weights for a tiny HF model, and writing them as (optionally sharded) safetensors.

The tensor names and shapes come from transformers itself (its model class built on the meta
device), so the files are exactly what HF expects, independently of our own model code.

The init is chosen for testing, not training: next-token distributions must be peaked and
differ from context to context, so that greedy decoding is not degenerate and the top-1 logit
beats the runner-up by a clear margin (fp32 implementations then agree token for token).
Measured on the default tiny models: logits have a std near LOGIT_STD, the median top-1/top-2
gap is about 1.2, under 1% of greedy steps have a gap below 1e-2, and most 40-token greedy
continuations of random prompts hold 20-30 distinct tokens, tied embeddings included (a few
settle into short loops, as greedy decoding of real models also does).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, PretrainedConfig

LOGIT_STD = 5.0          # embeddings and lm_head: std LOGIT_STD / sqrt(hidden)
INPUT_GAIN = 1.0         # q/k/v/gate/up: std INPUT_GAIN / sqrt(fan_in)
OUTPUT_GAIN = 2.0        # o/down: larger, so layers outweigh the token's own embedding
BIAS_STD = 0.1
NORM_NOISE_STD = 0.1     # inner norm weights are 1 + N(0, this)
RESIDUAL_OUTPUTS = ("o_proj.weight", "down_proj.weight")


def weight_shapes(hf_config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint for `hf_config` holds, in HF's order, tied ones left out."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) \
        if hf_config.tie_word_embeddings else set()
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()
            if name not in tied}


def random_weights(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                   seed: int) -> dict[str, torch.Tensor]:
    """Deterministic in (shapes, seed): drawn in float32 on the CPU, then cast to `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    return {name: _init(name, shape, generator).to(dtype) for name, shape in shapes.items()}


def _init(name: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if name == "model.norm.weight":
        # Centred on 0, not 1: in a shallow random model the residual stream is mostly the
        # input token's embedding, and with tied embeddings a final norm near 1 would make
        # every token its own best successor. Random signs break that correlation.
        return noise
    if name.endswith("norm.weight"):
        return 1.0 + NORM_NOISE_STD * noise
    if name.endswith(".bias"):
        return BIAS_STD * noise
    if name.endswith("embed_tokens.weight") or name == "lm_head.weight":
        return LOGIT_STD / math.sqrt(shape[-1]) * noise
    gain = OUTPUT_GAIN if name.endswith(RESIDUAL_OUTPUTS) else INPUT_GAIN
    return gain / math.sqrt(shape[-1]) * noise


def save_weights(weights: dict[str, torch.Tensor], out_dir: Path,
                 max_shard_size: int | None = None) -> list[Path]:
    """Writes `model.safetensors`, or, with `max_shard_size` (bytes), HF-style shards
    `model-0000i-of-0000n.safetensors` plus `model.safetensors.index.json`."""
    if max_shard_size is None:
        path = out_dir / "model.safetensors"
        save_file(weights, str(path), metadata={"format": "pt"})
        return [path]
    shards = _pack_shards(weights, max_shard_size)
    weight_map: dict[str, str] = {}
    paths = []
    for i, shard in enumerate(shards, start=1):
        path = out_dir / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    total_size = sum(_nbytes(tensor) for tensor in weights.values())
    index = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return paths


def _pack_shards(weights: dict[str, torch.Tensor],
                 max_shard_size: int) -> list[dict[str, torch.Tensor]]:
    """Greedy, in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in weights.items():
        nbytes = _nbytes(tensor)
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
