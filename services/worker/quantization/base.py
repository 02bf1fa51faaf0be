"""The interface of a quantization method, and the registry `--quantization` names.

A method decides how one linear layer (`linear.QuantLinear`) stores its weight and computes
`x @ W.T + b` from it; the layer itself only holds the parameters and forwards to the method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch

from radixmesh.services.worker.models.sinks import Sink
from radixmesh.services.worker.quantization.config import (
    QuantizationConfig,
    UnsupportedQuantizationError,
)
from radixmesh.shared.registry import Registry

if TYPE_CHECKING:
    from radixmesh.services.worker.quantization.linear import QuantLinear


class QuantizationMethod(ABC):
    """How a `QuantLinear` stores W and computes x @ W.T + b.

    Invariants every method keeps:
    - `create_weights` registers `weight` ([out, in], in the method's storage dtype) and any
      other parameter with one entry (or one row) per output row. All of them are row-aligned
      with `weight`, so the shards of a fused projection (q/k/v, gate/up) are blocks of rows of
      each, and quantizing one shard never reads another shard's rows.
    - `apply(layer, x)` has the shape and dtype of `F.linear(x, W, b)` for x [..., in] in the
      activation dtype, where W is what `dequantize(layer)` returns.
    - `quantize_rows(layer, rows, weight)` fills the block of rows `rows` from a float weight
      [rows, in]; quantizing a float checkpoint at load and drawing dummy weights go through it,
      so the two agree with a checkpoint that `quantize_rows` wrote (make-model's).
    - `checkpoint_sinks(layer, rows)`: HF tensor suffix (`weight`, `weight_scale`, ...) -> the
      sink that loads that tensor of one shard; what a checkpoint holds depends on whether it is
      prequantized. `ignored_suffixes`: checkpoint tensors the method reads nothing from.
    """

    ignored_suffixes: tuple[str, ...] = ()

    def __init__(self, config: QuantizationConfig) -> None:
        self.config = config

    @abstractmethod
    def create_weights(self, layer: QuantLinear) -> None: ...

    @abstractmethod
    def apply(self, layer: QuantLinear, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def quantize_rows(self, layer: QuantLinear, rows: slice, weight: torch.Tensor) -> None: ...

    @abstractmethod
    def dequantize(self, layer: QuantLinear) -> torch.Tensor:
        """W [out, in] in the activation dtype, as `apply` sees it (for tests and debugging)."""

    @abstractmethod
    def checkpoint_sinks(self, layer: QuantLinear, rows: slice) -> dict[str, Sink]: ...


QUANTIZATION_METHODS: Registry[type[QuantizationMethod]] = Registry(
    "quantization method", UnsupportedQuantizationError)


def quantization_method(config: QuantizationConfig) -> QuantizationMethod:
    """The method `config` names, bound to it."""
    return QUANTIZATION_METHODS.get(config.method)(config)
