"""Batch-invariant matrix products for `--enable-deterministic-inference`.

Why: a GEMM library picks its kernel (and with it the order in which a dot product is summed)
from the shape, above all from M, the number of rows. On this project's CPU torch (MKL, fp32)
`F.linear` of one row gives other bits than the same row inside 2, 3, 9 or 200 rows; so a
request's logits change with whatever else is in its batch, with how its prefill was chunked
and with whether its prefix came from the cache (each changes M).

What: under `BatchInvariantMatmul`, every linear layer and 2-D matrix product (`aten.linear`,
and `aten.matmul` of a matrix, which CPU torch runs as ops of their own, and `aten.mm` /
`aten.addmm`, what they decompose into elsewhere:
`nn.Linear`, the LM head and the dequantizing FP8 layers all come down to these) runs as a sequence of
products of exactly `row_block` rows, the last block padded with zero rows. Each call then has
one shape whatever the batch, hence one kernel, and a row's result does not depend on the other
rows of its block (a GEMM sums each output over K alone; where a library's bits also depend on
the row's place in the block, the block is one row: see `CPU_ROW_BLOCK`). Products of other ranks (the attention
backends' batched products, whose shapes they fix themselves) pass through untouched.

Cost: M / row_block kernel calls instead of one, and the weights read once per block
(`row_block_for` gives each device's block). On a GPU with triton, products of one float dtype
run instead as one launch of kernels/invariant_matmul.py, invariant by its fixed tiling: the
weights are read once per step however many blocks of rows there are.

What is covered: the torch ops on any device for the products above. Not covered: a quantized
model's FP8 GEMMs on a GPU (refused with the flag: `check_quantization`),
and cuBLAS's own guarantee that one shape always runs one kernel (it holds for a fixed workspace
and stream, which the worker keeps, but NVIDIA documents no batch invariance).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from radixmesh.kernels.fused_gate import TRITON_USABLE, use_triton

if TRITON_USABLE:
    from radixmesh.kernels.invariant_matmul import invariant_mm

aten = torch.ops.aten

# Rows per product. On a CPU, one: MKL's bits for a row also depend on the row's place inside
# the product (on a 16-core Xeon the 9th row of a 16-row block differed from the same row
# first in its block; the 2-core CI machine did not show it), so each row is a product of its
# own, one shape whatever the batch. Cheap there: a row costs a GEMV, the weights stay in cache
# for a small model, and determinism on a CPU is for tests. On a GPU, 128: one tensor-core
# tile, each output's sum over K the same loop at every place in the tile.
CPU_ROW_BLOCK = 1
GPU_ROW_BLOCK = 128


def row_block_for(device: torch.device) -> int:
    return GPU_ROW_BLOCK if device.type == "cuda" else CPU_ROW_BLOCK


INVARIANT_KERNEL_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def check_quantization(quantized: bool, device: torch.device) -> None:
    """FP8 layers on a GPU run their own GEMMs (a few-token Triton kernel up to 16 rows,
    cuBLASLt above), outside this dispatch, so a row's bits would follow its batch: refused.
    On a CPU they dequantize into `F.linear`, which the dispatch covers."""
    if quantized and device.type != "cpu":
        raise ValueError("a quantized model (--quantization or an FP8 checkpoint) cannot run "
                         "with --enable-deterministic-inference on a GPU: its FP8 GEMMs pick "
                         "their kernel by batch size")


def invariant_product(a: torch.Tensor, b: torch.Tensor, row_block: int,
                      bias: torch.Tensor | None = None, beta: float = 1, alpha: float = 1
                      ) -> torch.Tensor:
    """a @ b (or beta * bias + alpha * a @ b) with bitwise the same rows whatever M is: the
    one-launch kernel where it runs (a CUDA tensor, triton, one float dtype), else
    `blocked_mm`."""
    if use_triton(a) and a.dtype == b.dtype and a.dtype in INVARIANT_KERNEL_DTYPES:
        return invariant_mm(a, b, bias, beta, alpha)
    return blocked_mm(a, b, row_block, bias, beta, alpha)


def blocked_mm(a: torch.Tensor, b: torch.Tensor, row_block: int,
               bias: torch.Tensor | None = None, beta: float = 1, alpha: float = 1
               ) -> torch.Tensor:
    """a @ b (or beta * bias + alpha * a @ b), computed `row_block` rows of `a` at a time with
    every call the same shape: bitwise the same rows whatever M is."""
    m = a.shape[0]
    out = a.new_empty((m, b.shape[1]))
    a = a.contiguous()  # one layout for every block, so one kernel
    row_bias = bias is not None and bias.dim() == 2 and bias.shape[0] == m and m != 1
    for start in range(0, m, row_block):
        rows = min(row_block, m - start)
        block = a[start:start + rows]
        if rows < row_block:
            block = F.pad(block, (0, 0, 0, row_block - rows))
        if bias is None:
            product = torch.mm(block, b)
        else:
            block_bias = bias[start:start + rows] if row_bias else bias
            if row_bias and rows < row_block:
                block_bias = F.pad(block_bias, (0, 0, 0, row_block - rows))
            product = torch.addmm(block_bias, block, b, beta=beta, alpha=alpha)
        out[start:start + rows] = product[:rows]
    return out


class BatchInvariantMatmul(TorchDispatchMode):
    """While active (a context manager, per thread), routes `aten.linear`, `aten.mm`,
    `aten.addmm` and matrix-by-matrix `aten.matmul` through `invariant_product`; every other op runs as it would. Nested ops inside the handler run outside the
    mode, so the blocks' own `mm` calls are the real kernels."""

    def __init__(self, row_block: int) -> None:
        super().__init__()
        if row_block < 1:
            raise ValueError("row_block must be >= 1")
        self.row_block = row_block
        self._handlers: dict[Any, Callable[..., torch.Tensor]] = {
            aten.mm.default: self._mm, aten.addmm.default: self._addmm,
            aten.linear.default: self._linear, aten.matmul.default: self._matmul}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        handler = self._handlers.get(func)
        if handler is None:
            return func(*args, **(kwargs or {}))
        return handler(*args, **(kwargs or {}))

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return invariant_product(a, b, self.row_block)

    def _linear(self, x: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = invariant_product(rows, weight.t(), self.row_block, bias)
        return out.view(*x.shape[:-1], weight.shape[0])

    def _matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if b.dim() != 2 or a.dim() < 2:  # batched products: shapes their callers fix
            return torch.matmul(a, b)
        out = invariant_product(a.reshape(-1, a.shape[-1]), b, self.row_block)
        return out.view(*a.shape[:-1], b.shape[1])

    def _addmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *,
               beta: float = 1, alpha: float = 1) -> torch.Tensor:
        return invariant_product(a, b, self.row_block, bias, beta, alpha)
