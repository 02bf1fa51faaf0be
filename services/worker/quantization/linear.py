"""The linear layers a model builds when a quantization method applies to them.

`QuantLinear` stands where `nn.Linear` would, under the same HF module name, and holds whatever
parameters its method creates (`weight`, `weight_scale`, ...); `FusedQuantLinear` is its fused
form, with the same shard rows as `FusedLinear`. `make_linear` and `make_fused_linear` choose
between the plain and the quantized layer, so model code reads the same either way.
"""

from __future__ import annotations

import torch
from torch import nn

from radixmesh.services.worker.models.fused_linear import FusedLinear, FusedRows
from radixmesh.services.worker.models.sinks import CopySink, Cut, Sink

# Registers "fp8": models reach quantization through this module.
from radixmesh.services.worker.quantization import fp8 as _fp8  # noqa: F401
from radixmesh.services.worker.quantization.base import QuantizationMethod, quantization_method
from radixmesh.services.worker.quantization.config import (
    QuantizationConfig,
    UnsupportedQuantizationError,
)


class QuantLinear(nn.Module):
    """x @ W.T + b with W stored and multiplied as `method` decides.

    `act_dtype` is the dtype of the activations (and of the bias): the default dtype when the
    layer is built, as for every other parameter of the model.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool,
                 method: QuantizationMethod) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.method = method
        self.act_dtype = torch.get_default_dtype()
        method.create_weights(self)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def quantize_rows(self, rows: slice, weight: torch.Tensor) -> None:
        """Fills rows `rows` from a float weight (quantize at load, dummy weights)."""
        self.method.quantize_rows(self, rows, weight)

    def dequantized_weight(self) -> torch.Tensor:
        return self.method.dequantize(self)

    def checkpoint_sinks(self, rows: slice) -> dict[str, Sink]:
        """HF tensor suffix -> its sink, for the block of rows `rows` (one shard)."""
        sinks = self.method.checkpoint_sinks(self, rows)
        if self.bias is not None:
            sinks["bias"] = CopySink(self.bias.detach()[rows])
        return sinks

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, quantization={self.method.config.method}")


class FusedQuantLinear(FusedRows, QuantLinear):
    """A quantized `FusedLinear`: every row-aligned parameter is split by the same shard rows."""

    def __init__(self, in_features: int, shards: dict[str, int], bias: bool,
                 method: QuantizationMethod, cuts: dict[str, Cut] | None = None) -> None:
        super().__init__(in_features, sum(shards.values()), bias, method)
        self.set_shards(shards, cuts)


def make_linear(in_features: int, out_features: int, bias: bool,
                quantization: QuantizationConfig | None, name: str) -> nn.Module:
    """`nn.Linear`, or a `QuantLinear` where `quantization` covers the HF module `name`."""
    if quantization is None or quantization.is_ignored(name):
        return nn.Linear(in_features, out_features, bias=bias)
    return QuantLinear(in_features, out_features, bias, quantization_method(quantization))


def make_fused_linear(in_features: int, shards: dict[str, int], bias: bool,
                      quantization: QuantizationConfig | None, parent: str,
                      cuts: dict[str, Cut] | None = None) -> nn.Module:
    """`FusedLinear`, or its quantized form; a checkpoint must keep all of a fused layer's
    shards (`parent.q_proj`, ...) quantized or none of them: one GEMM has one weight format.
    `cuts`: the rows of each shard's full tensor this tensor-parallel rank holds."""
    ignored = {quantization is None or quantization.is_ignored(f"{parent}.{shard}")
               for shard in shards}
    if len(ignored) > 1:
        raise UnsupportedQuantizationError(
            f"the checkpoint quantizes some of {', '.join(shards)} in {parent} but not all; "
            "they run as one fused GEMM")
    if ignored == {True}:
        return FusedLinear(in_features, shards, bias, cuts)
    assert quantization is not None
    return FusedQuantLinear(in_features, shards, bias, quantization_method(quantization), cuts)
