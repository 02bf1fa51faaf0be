"""SiLU-and-multiply, the middle of the SwiGLU MLP, in one launch.

HF computes `act_fn(gate) * up`: the SiLU is rounded to the input dtype before the product,
and the kernel rounds at the same place, so bf16 results match the torch ops bit for bit up to
the exp implementation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(gate_ptr, up_ptr, out_ptr, WIDTH: tl.constexpr, GATE_STRIDE: tl.constexpr,
                     UP_STRIDE: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < WIDTH
    gate = tl.load(gate_ptr + row * GATE_STRIDE + cols, mask=mask, other=0.0)
    up = tl.load(up_ptr + row * UP_STRIDE + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(gate.dtype)
    out = act.to(tl.float32) * up.to(tl.float32)
    tl.store(out_ptr + row * WIDTH + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate_up[:, :I]) * gate_up[:, I:] for gate_up [T, 2*I] (a fused gate/up output)."""
    assert gate_up.shape[-1] % 2 == 0, "gate_up must be [gate | up], two equal halves"
    width = gate_up.shape[-1] // 2
    return silu_mul(gate_up[..., :width], gate_up[..., width:])


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate and up [T, I] of one dtype; rows may be strided views (the
    halves of a fused projection), but each row must be contiguous."""
    assert gate.shape == up.shape and gate.dtype == up.dtype and gate.dim() == 2
    assert gate.stride(-1) == 1 and up.stride(-1) == 1
    num_rows, width = gate.shape
    out = torch.empty((num_rows, width), dtype=gate.dtype, device=gate.device)
    if num_rows == 0:
        return out
    # Strides are compile-time constants: fixed per model, and each runtime argument costs
    # host time on every launch.
    _silu_mul_kernel[(num_rows, triton.cdiv(width, BLOCK))](
        gate, up, out, WIDTH=width, GATE_STRIDE=gate.stride(0), UP_STRIDE=up.stride(0),
        BLOCK=BLOCK, num_warps=4)
    return out
