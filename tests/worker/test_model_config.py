"""ModelConfig reads transformers v4 and v5 config.json styles to the same values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from radixmesh.services.worker.model_config import ModelConfig, UnsupportedModelError

LLAMA_31_V4 = {  # as Llama-3.1-8B-Instruct ships it (transformers v4)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "intermediate_size": 14336, "vocab_size": 128256, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 131072, "rope_theta": 500000.0, "torch_dtype": "bfloat16",
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
    "tie_word_embeddings": False,
}


def v5_style(config: dict[str, Any]) -> dict[str, Any]:
    """The same model as transformers v5 writes it: theta and scaling in `rope_parameters`."""
    converted = {k: v for k, v in config.items()
                 if k not in ("rope_theta", "rope_scaling", "torch_dtype")}
    converted["rope_parameters"] = {"rope_theta": config["rope_theta"],
                                    **(config.get("rope_scaling") or {"rope_type": "default"})}
    converted["dtype"] = config["torch_dtype"]
    return converted


def test_llama31_v4_and_v5_styles_agree() -> None:
    v4 = ModelConfig.from_dicts(LLAMA_31_V4)
    v5 = ModelConfig.from_dicts(v5_style(LLAMA_31_V4))

    assert v4 == v5
    assert v4.rope_theta == 500000.0
    assert v4.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert (v4.head_dim, v4.num_key_value_heads, v4.context_len) == (128, 8, 131072)
    assert v4.dtype == "bfloat16" and v4.eos_token_ids == (128001, 128008, 128009)
    assert v4.sliding_window is None and not v4.attention_bias and not v4.qk_norm


def test_legacy_type_key_and_default_rope() -> None:
    linear = ModelConfig.from_dicts({**LLAMA_31_V4, "rope_scaling": {"type": "linear",
                                                                      "factor": 2.0}})
    plain = ModelConfig.from_dicts({**LLAMA_31_V4, "rope_scaling": None})

    assert linear.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert plain.rope_scaling is None and plain.rope_theta == 500000.0


def test_generation_config_eos_wins(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**LLAMA_31_V4, "eos_token_id": 2}))
    assert ModelConfig.from_pretrained(tmp_path).eos_token_ids == (2,)

    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert ModelConfig.from_pretrained(tmp_path).eos_token_ids == (2, 7)


def test_qwen_flags() -> None:
    qwen2 = ModelConfig.from_dicts({**LLAMA_31_V4, "architectures": ["Qwen2ForCausalLM"],
                                    "sliding_window": 4096, "use_sliding_window": False})
    qwen3 = ModelConfig.from_dicts({**LLAMA_31_V4, "architectures": ["Qwen3ForCausalLM"],
                                    "head_dim": 64})

    assert qwen2.attention_bias and not qwen2.qk_norm and qwen2.sliding_window is None
    assert qwen3.qk_norm and not qwen3.attention_bias and qwen3.head_dim == 64


def test_sliding_window_per_layer() -> None:
    mistral = ModelConfig.from_dicts({**LLAMA_31_V4, "architectures": ["MistralForCausalLM"],
                                      "sliding_window": 4096})
    qwen2 = ModelConfig.from_dicts({**LLAMA_31_V4, "architectures": ["Qwen2ForCausalLM"],
                                    "sliding_window": 1024, "use_sliding_window": True,
                                    "max_window_layers": 30})

    assert [mistral.layer_sliding_window(i) for i in (0, 31)] == [4096, 4096]
    assert [qwen2.layer_sliding_window(i) for i in (0, 29, 30, 31)] == [None, None, 1024, 1024]


def test_unsupported_architecture_is_named() -> None:
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*LlamaForCausalLM"):
        ModelConfig.from_dicts({**LLAMA_31_V4, "architectures": ["GPT2LMHeadModel"]})


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_pretrained(tmp_path)
