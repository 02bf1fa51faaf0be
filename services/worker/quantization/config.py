"""What is quantized and how: from `--quantization` and from a checkpoint's `quantization_config`.

Plain data with no torch import, so the worker's config module and the JSON config reader can
use it cheaply. The method itself (the math) is looked up by name in `base.QUANTIZATION_METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Methods --quantization accepts; each is registered in base.QUANTIZATION_METHODS (a test keeps
# the two in step). Listed here too so that reading the flags never imports torch.
QUANTIZATION_CHOICES = ("fp8",)
ACTIVATION_SCHEMES = ("dynamic", "static")


class UnsupportedQuantizationError(ValueError):
    """A quantization flag or checkpoint this worker cannot run."""


@dataclass(frozen=True)
class QuantizationConfig:
    """Invariants: `method` is one of QUANTIZATION_CHOICES; `prequantized` is True exactly when
    the checkpoint's tensors are already quantized (they are loaded as they are), False when the
    worker quantizes a float checkpoint at load; `ignored_layers` are HF module names (or
    prefixes of them, e.g. `model.layers.0`) kept in the activation dtype."""

    method: str
    prequantized: bool
    activation_scheme: str = "dynamic"
    ignored_layers: tuple[str, ...] = ()

    def is_ignored(self, name: str) -> bool:
        """True for a layer the checkpoint keeps unquantized, by HF name or a prefix of it."""
        return any(name == entry or name.startswith(entry + ".") for entry in self.ignored_layers)

    @classmethod
    def from_hf(cls, quantization_config: dict[str, Any]) -> QuantizationConfig:
        """A checkpoint's `quantization_config` (vLLM's and SGLang's `fp8` format: per-tensor or
        per-channel `weight_scale`, optional `input_scale`)."""
        method = quantization_config.get("quant_method")
        if method not in QUANTIZATION_CHOICES:
            raise UnsupportedQuantizationError(
                f"checkpoint quantization {method!r} is not supported; supported: "
                f"{', '.join(QUANTIZATION_CHOICES)}")
        if quantization_config.get("weight_block_size"):
            raise UnsupportedQuantizationError(
                "block-wise FP8 checkpoints (weight_block_size) are not supported; per-tensor "
                "and per-channel weight scales are")
        scheme = quantization_config.get("activation_scheme", "dynamic")
        if scheme not in ACTIVATION_SCHEMES:
            raise UnsupportedQuantizationError(f"unknown activation_scheme {scheme!r}")
        ignored = (quantization_config.get("ignored_layers")
                   or quantization_config.get("modules_to_not_convert") or ())
        return cls(method, prequantized=True, activation_scheme=scheme,
                   ignored_layers=tuple(str(name) for name in ignored))


def with_flag(checkpoint: QuantizationConfig | None,
              flag: str | None) -> QuantizationConfig | None:
    """The quantization a model runs with: the checkpoint's when it is quantized (the flag, if
    given, must name the same method), else the flag's, applied at load."""
    if flag is None:
        return checkpoint
    if flag not in QUANTIZATION_CHOICES:
        raise UnsupportedQuantizationError(
            f"unknown --quantization {flag!r}; supported: {', '.join(QUANTIZATION_CHOICES)}")
    if checkpoint is None:
        return QuantizationConfig(flag, prequantized=False)
    if checkpoint.method != flag:
        raise UnsupportedQuantizationError(
            f"--quantization {flag} asked for a checkpoint quantized with {checkpoint.method}")
    return checkpoint
