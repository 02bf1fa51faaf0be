"""`radixmesh make-model`: a random HF-format model directory with a locally trained tokenizer.

The directory holds `config.json` and `generation_config.json` (written by transformers' own
config classes), `model.safetensors` (or shards with an index) and the tokenizer files, and
loads offline with `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained`. With
`quantization="fp8"` the decoder's projections are written prequantized (see quantize.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PretrainedConfig,
    Qwen2Config,
    Qwen3Config,
)

from radixmesh.make_model.quantize import quantize_weights, write_quantization_config
from radixmesh.make_model.tokenizer import TokenizerInfo, train_tokenizer
from radixmesh.make_model.weights import random_weights, save_weights, weight_shapes
from radixmesh.services.worker.quantization.config import QUANTIZATION_CHOICES
from radixmesh.shared.model_location import DEFAULT_MODEL_NAME, default_model_dir

ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], str]] = {
    "llama": (LlamaConfig, "LlamaForCausalLM"),
    "mistral": (MistralConfig, "MistralForCausalLM"),
    "qwen2": (Qwen2Config, "Qwen2ForCausalLM"),
    "qwen3": (Qwen3Config, "Qwen3ForCausalLM"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_model(out_dir: str | Path, arch: str = "llama", *, hidden_size: int = 64,
               num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
               intermediate_size: int = 128, vocab_size: int | None = None,
               max_position_embeddings: int = 2048, tie_word_embeddings: bool = False,
               rope_scaling: dict[str, Any] | None = None, sliding_window: int | None = None,
               dtype: str = "float32", seed: int = 0,
               max_shard_size: int | None = None, quantization: str | None = None) -> Path:
    """Writes a random model into `out_dir` (created) and returns it.

    `vocab_size` defaults to the tokenizer's; the tokenizer is trained to exactly that size, so
    every model id is a tokenizer id. `sliding_window` makes every Mistral layer slide, and the
    upper half of the layers for Qwen (HF's `max_window_layers`). `quantization` ("fp8")
    writes the same random weights prequantized. Same arguments, same files.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    out = Path(out_dir)
    tokenizer = (train_tokenizer(out, vocab_size, model_max_length=max_position_embeddings)
                 if vocab_size is not None
                 else train_tokenizer(out, model_max_length=max_position_embeddings))
    hf_config = build_hf_config(
        arch, tokenizer, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
        num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, rope_scaling=rope_scaling,
        sliding_window=sliding_window, dtype=dtype)
    hf_config.save_pretrained(out)
    GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=list(tokenizer.eos_token_ids),
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    weights = random_weights(weight_shapes(hf_config), DTYPES[dtype], seed)
    if quantization is not None:
        weights = quantize_weights(weights, quantization)
        write_quantization_config(out, quantization)
    save_weights(weights, out, max_shard_size)
    return out


def build_hf_config(arch: str, tokenizer: TokenizerInfo, *, hidden_size: int, num_layers: int,
                    num_heads: int, num_kv_heads: int, intermediate_size: int,
                    max_position_embeddings: int, tie_word_embeddings: bool,
                    rope_scaling: dict[str, Any] | None, sliding_window: int | None,
                    dtype: str) -> PretrainedConfig:
    """The transformers config object for one of ARCHITECTURES."""
    if hidden_size % num_heads or num_heads % num_kv_heads:
        raise ValueError("hidden_size must divide by num_heads, num_heads by num_kv_heads")
    config_class, architecture = ARCHITECTURES[arch]
    head_dim = hidden_size // num_heads
    extra: dict[str, Any] = {} if arch == "qwen2" else {"head_dim": head_dim}
    if arch == "mistral":
        extra["sliding_window"] = sliding_window
    elif sliding_window is not None:
        if arch == "llama":
            raise ValueError("llama has no sliding window; use mistral, qwen2 or qwen3")
        extra.update(use_sliding_window=True, sliding_window=sliding_window,
                     max_window_layers=num_layers // 2)
    return config_class(
        architectures=[architecture], vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,  # HF edits it in place
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype=dtype, **extra)


def default_model_path() -> Path:
    """`$RADIXMESH_HOME/models/tiny-llama`, made with the defaults on first use.

    Built in a sibling temp dir and renamed into place, so a reader never sees a half-written
    model and processes racing to create it all end up with one complete copy.
    """
    target = default_model_dir()
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=target.parent))
    try:
        make_model(staging)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # not a lost race: a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `radixmesh make-model OUT`."""
    parser.add_argument("out", type=Path, help="directory to write the model into")
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="llama")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-kv-heads", type=int, default=2)
    parser.add_argument("--intermediate-size", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="default: the tokenizer's default vocabulary size")
    parser.add_argument("--max-position-embeddings", type=int, default=2048)
    parser.add_argument("--tie-word-embeddings", action="store_true")
    parser.add_argument("--rope-scaling", type=json.loads, default=None,
                        help='JSON, e.g. \'{"rope_type": "linear", "factor": 2.0}\'')
    parser.add_argument("--sliding-window", type=int, default=None,
                        help="mistral: every layer; qwen2/qwen3: the upper half of the layers")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shard-size", type=int, default=None,
                        help="bytes per safetensors shard (default: a single file)")
    parser.add_argument("--quantization", choices=QUANTIZATION_CHOICES, default=None,
                        help="write the decoder's projections prequantized (FP8 e4m3 with "
                             "per-channel weight_scale, quant_method fp8 in config.json)")


def run_cli(args: argparse.Namespace) -> int:
    out = make_model(
        args.out, args.arch, hidden_size=args.hidden_size, num_layers=args.num_layers,
        num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
        intermediate_size=args.intermediate_size, vocab_size=args.vocab_size,
        max_position_embeddings=args.max_position_embeddings,
        tie_word_embeddings=args.tie_word_embeddings, rope_scaling=args.rope_scaling,
        sliding_window=args.sliding_window, dtype=args.dtype, seed=args.seed,
        max_shard_size=args.max_shard_size, quantization=args.quantization)
    print(f"wrote {args.arch} model to {out}")
    return 0


__all__ = ["add_cli_args", "default_model_path", "make_model", "run_cli"]
