"""The model's shape and numerics, read from a HF model directory as plain JSON.

Both config styles that transformers has written are understood: v4 (`rope_theta` next to a
`rope_scaling` dict keyed by `type` or `rope_type`) and v5 (a `rope_parameters` dict holding
`rope_theta`, `rope_type` and the scaling fields). Either way the result is normalized to
`rope_theta` plus `rope_scaling`, which is None for plain RoPE and otherwise a dict that always
carries `rope_type`.

A checkpoint quantized ahead of time says so in `quantization_config`; that is read here too
(`quantization`), and `--quantization` is merged with it at load (quantization/config.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radixmesh.services.worker.quantization.config import (
    QuantizationConfig,
    UnsupportedQuantizationError,
)

SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
)
DEFAULT_ROPE_THETA = 10000.0


class UnsupportedModelError(ValueError):
    """The config names an architecture or feature this worker cannot run."""


@dataclass(frozen=True, slots=True)
class ModelConfig:
    architecture: str
    model_type: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool          # bias on q/k/v (and on o for Llama/Qwen3, never for Qwen2)
    mlp_bias: bool
    qk_norm: bool                 # RMSNorm over head_dim on q and k before RoPE (Qwen3)
    sliding_window: int | None    # window of the sliding layers; None when no layer slides
    layer_types: tuple[str, ...]  # per layer: "full_attention" or "sliding_attention"
    dtype: str | None             # the checkpoint's dtype name, e.g. "bfloat16"
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    quantization: QuantizationConfig | None = None  # the checkpoint's own (prequantized)

    @property
    def context_len(self) -> int:
        return self.max_position_embeddings

    def layer_sliding_window(self, layer_id: int) -> int | None:
        """The attention window of one layer (None: full causal attention)."""
        if self.layer_types[layer_id] == "sliding_attention":
            return self.sliding_window
        return None

    @classmethod
    def from_pretrained(cls, model_path: str | Path) -> ModelConfig:
        """Reads `config.json` and, when present, `generation_config.json` from a model dir."""
        path = Path(model_path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no config.json in model directory {path}")
        config = json.loads(config_file.read_text())
        generation_file = path / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
        return cls.from_dicts(config, generation)

    @classmethod
    def from_dicts(cls, config: dict[str, Any],
                   generation: dict[str, Any] | None = None) -> ModelConfig:
        """Builds the config from parsed `config.json` and `generation_config.json` contents."""
        architecture = _architecture(config)
        if config.get("hidden_act", "silu") != "silu":
            raise UnsupportedModelError(f"hidden_act {config['hidden_act']!r} is not supported")
        hidden_size = int(config["hidden_size"])
        num_heads = int(config["num_attention_heads"])
        rope_theta, rope_scaling = _rope(config)
        num_layers = int(config["num_hidden_layers"])
        sliding_window, layer_types = _sliding_window(config, architecture, num_layers)
        eos = (generation or {}).get("eos_token_id", config.get("eos_token_id"))
        return cls(
            architecture=architecture,
            model_type=str(config.get("model_type", "")),
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(config.get("head_dim") or hidden_size // num_heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config["vocab_size"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=architecture == "Qwen2ForCausalLM"
            or bool(config.get("attention_bias", False)),
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=architecture == "Qwen3ForCausalLM",
            sliding_window=sliding_window,
            layer_types=layer_types,
            dtype=config.get("dtype") or config.get("torch_dtype"),
            eos_token_ids=_token_ids(eos),
            bos_token_id=config.get("bos_token_id"),
            quantization=_quantization(config),
        )


def _architecture(config: dict[str, Any]) -> str:
    architectures = config.get("architectures") or []
    for name in architectures:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    raise UnsupportedModelError(
        f"unsupported architecture {architectures or '(none given)'}; supported: {supported}")


def _quantization(config: dict[str, Any]) -> QuantizationConfig | None:
    quantization = config.get("quantization_config")
    if not quantization:
        return None
    try:
        return QuantizationConfig.from_hf(quantization)
    except UnsupportedQuantizationError as error:
        raise UnsupportedModelError(str(error)) from None


def _rope(config: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from either config style."""
    parameters = config.get("rope_parameters")
    if parameters is not None:  # v5: everything in one dict
        scaling = dict(parameters)
        theta = float(scaling.pop("rope_theta", config.get("rope_theta", DEFAULT_ROPE_THETA)))
    else:  # v4: theta at top level, scaling dict (or null) beside it
        theta = float(config.get("rope_theta", DEFAULT_ROPE_THETA))
        scaling = dict(config.get("rope_scaling") or {})
        scaling.pop("rope_theta", None)
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type == "default":
        return theta, None
    return theta, {"rope_type": rope_type, **scaling}


def _sliding_window(config: dict[str, Any], architecture: str,
                    num_layers: int) -> tuple[int | None, tuple[str, ...]]:
    """Mistral slides on every layer when `sliding_window` is set. Qwen2/Qwen3 slide only when
    `use_sliding_window`, and then only from layer `max_window_layers` on (as HF does), unless
    the config spells out `layer_types`."""
    window = config.get("sliding_window")
    if architecture != "MistralForCausalLM" and not config.get("use_sliding_window", False):
        window = None
    if window is None:
        return None, ("full_attention",) * num_layers
    layer_types = config.get("layer_types")
    if layer_types is None:
        first_sliding = 0
        if architecture != "MistralForCausalLM":
            first_sliding = int(config.get("max_window_layers", num_layers))
        layer_types = ["sliding_attention" if i >= first_sliding else "full_attention"
                       for i in range(num_layers)]
    if len(layer_types) != num_layers:
        raise UnsupportedModelError(
            f"layer_types has {len(layer_types)} entries for {num_layers} layers")
    return int(window), tuple(layer_types)


def _token_ids(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(token) for token in value)
