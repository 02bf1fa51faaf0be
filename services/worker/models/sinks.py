"""Where one checkpoint tensor goes: a `Sink` checks it and writes it into the model.

The loader maps each HF checkpoint name to one sink. Most are a plain copy into a parameter (or
into a block of rows of a fused one); quantized layers bring their own (quantize a float weight
at load, or broadcast a per-tensor scale over its rows), so the loader never needs to know how
a layer stores its weight.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


class Sink(ABC):
    """Invariants: `view` is the (part of a) model tensor this sink fills, and `load` writes
    all of it; `mismatch` is None exactly when `load` accepts the tensor."""

    view: torch.Tensor

    @abstractmethod
    def mismatch(self, tensor: torch.Tensor) -> str | None:
        """Why `tensor` cannot be loaded here (for the loader's error), or None."""

    @abstractmethod
    def load(self, tensor: torch.Tensor) -> None:
        """Writes `tensor` (a CPU tensor straight from the checkpoint) into place."""


class CopySink(Sink):
    """Same shape, copied with a cast to the parameter's dtype and device."""

    def __init__(self, view: torch.Tensor) -> None:
        self.view = view

    def mismatch(self, tensor: torch.Tensor) -> str | None:
        if tensor.shape != self.view.shape:
            return f"checkpoint {tuple(tensor.shape)}, model {tuple(self.view.shape)}"
        return None

    def load(self, tensor: torch.Tensor) -> None:
        self.view.copy_(tensor)


class ExactDtypeSink(CopySink):
    """A copy that must not convert: an FP8 weight read as, say, bfloat16 would lose its scale."""

    def mismatch(self, tensor: torch.Tensor) -> str | None:
        if tensor.dtype != self.view.dtype:
            return f"checkpoint dtype {tensor.dtype}, model {self.view.dtype}"
        return super().mismatch(tensor)


class RowScaleSink(Sink):
    """A per-row scale vector [rows] filled from a per-tensor scale (shape () or (1,)) or a
    per-channel one ((rows,) or (rows, 1)): per-tensor scales become per-row ones, exactly."""

    def __init__(self, view: torch.Tensor) -> None:
        self.view = view

    def mismatch(self, tensor: torch.Tensor) -> str | None:
        rows = self.view.shape[0]
        if tensor.numel() not in (1, rows) or tensor.dim() > 2 or (
                tensor.dim() == 2 and tensor.shape[1] != 1):
            return (f"checkpoint {tuple(tensor.shape)}, model ({rows},) or one scale for the "
                    "whole tensor")
        return None

    def load(self, tensor: torch.Tensor) -> None:
        self.view.copy_(tensor.reshape(-1).to(torch.float32).expand(self.view.shape[0]))


@dataclass(frozen=True)
class Cut:
    """The part of a full checkpoint tensor that a rank's model tensor holds: indices
    [start, stop) of dimension `dim`, of `full` in all (tensor parallelism; see
    parallel/sharding.py)."""

    dim: int
    start: int
    stop: int
    full: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.narrow(self.dim, self.start, self.length)

    def index(self, ndim: int) -> tuple[slice, ...]:
        """The cut as an index of an `ndim`-dimensional tensor (for lazy slices of a file)."""
        return tuple(slice(self.start, self.stop) if dim == self.dim else slice(None)
                     for dim in range(ndim))


class CutSink(Sink):
    """A sink fed the whole checkpoint tensor that keeps only its `cut` (a rank's share)."""

    def __init__(self, inner: Sink, cut: Cut) -> None:
        self.inner, self.cut = inner, cut
        self.view = inner.view

    @property
    def full_shape(self) -> tuple[int, ...]:
        shape = list(self.view.shape)
        shape[self.cut.dim] = self.cut.full
        return tuple(shape)

    def shape_mismatch(self, shape: tuple[int, ...]) -> str | None:
        """Why a checkpoint tensor of `shape` is not the full tensor of the cut, or None."""
        if len(shape) <= self.cut.dim or shape[self.cut.dim] != self.cut.full:
            return (f"checkpoint {shape}, model {self.full_shape} (cut along dimension "
                    f"{self.cut.dim} for tensor parallelism)")
        return None

    def mismatch(self, tensor: torch.Tensor) -> str | None:
        return (self.shape_mismatch(tuple(tensor.shape))
                or self.inner.mismatch(self.cut.of(tensor)))

    def load(self, tensor: torch.Tensor) -> None:
        self.inner.load(self.cut.of(tensor))
