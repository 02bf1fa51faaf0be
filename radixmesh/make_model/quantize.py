"""Prequantized checkpoints: make-model's `--quantization fp8`.

The decoder's projection weights are stored as vLLM's and SGLang's `fp8` checkpoints store them:
`*.weight` in float8_e4m3fn beside a float32 `*.weight_scale` (here per output channel, shape
[out, 1]), and config.json says `quantization_config: {quant_method: fp8, ...}`. Embeddings,
norms, biases and `lm_head` stay in the model's dtype. The quantization is the worker's own
(`quantize_rows`), so this checkpoint loads bit for bit like the float checkpoint of the same
seed and dtype quantized at load with `--quantization fp8`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from radixmesh.services.worker.quantization.config import QUANTIZATION_CHOICES
from radixmesh.services.worker.quantization.fp8 import quantize_rows

# The linears the worker quantizes: every projection inside a decoder layer.
QUANTIZED = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.\w+_proj\.weight$")
FP8_CONFIG: dict[str, Any] = {"quant_method": "fp8", "activation_scheme": "dynamic",
                              "ignored_layers": ["lm_head"]}


def quantize_weights(weights: dict[str, torch.Tensor],
                     method: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors with each decoder projection's weight quantized (its scale
    beside it, `*.weight_scale`), in the same order."""
    if method not in QUANTIZATION_CHOICES:
        raise ValueError(f"unknown quantization {method!r}; choose from "
                         f"{', '.join(QUANTIZATION_CHOICES)}")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not QUANTIZED.match(name):
            out[name] = tensor
            continue
        q, scale = quantize_rows(tensor)
        out[name] = q
        out[f"{name}_scale"] = scale.unsqueeze(-1)
    return out


def write_quantization_config(out_dir: Path, method: str) -> None:
    """Adds `quantization_config` to the config.json transformers wrote."""
    assert method == "fp8", method
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    config["quantization_config"] = dict(FP8_CONFIG)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
