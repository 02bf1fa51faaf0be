"""Copies whole KV pages between the device pool and the mapped host pool, on a few SMs.

Why a kernel of its own: a copy that reads or writes pinned host memory from the device stalls
on PCIe, and torch's `index_copy_` launches as many blocks as the rows ask for, so a backup of a
prefill chunk's pages (hundreds of MiB) held every SM for the length of the transfer while the
forward pass beside it waited for SMs. Here a fixed, small grid walks all the rows: PCIe
writes are posted, so a few SMs keep the link busy, and the rest of the device stays with the
model. One launch moves every layer's K and V rows of a step's pages, where the torch path took
three launches per layer.

The copy is described as planes: plane p (a layer's K, or its V) is a row table at
`src_bases[p]` with rows `src_stride` words apart, mirrored at `dst_bases[p]` with rows
`dst_stride` words apart; row `src_rows[i]` of every plane goes to row `dst_rows[i]`. Addresses
are raw device pointers (the host pool's, as mapped into the device's address space), so one
launch can reach buffers that are not one tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Enough CTAs that the PCIe link stays full (measured on H100/H200), few enough that the
# forward pass beside the copy keeps nearly all of the device's SMs.
DEFAULT_CTAS = 8
_BLOCK_WORDS = 1024  # int64 words per inner step: 8 KiB


@triton.jit
def _copy_rows_kernel(src_bases, dst_bases, src_rows, dst_rows, num_rows, num_planes,
                      src_stride, dst_stride, row_words, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    total = num_rows * num_planes
    for item in range(tl.program_id(0), total, tl.num_programs(0)):
        row = item // num_planes
        plane = item % num_planes
        src = tl.load(src_bases + plane).to(tl.pointer_type(tl.int64))
        dst = tl.load(dst_bases + plane).to(tl.pointer_type(tl.int64))
        src += tl.load(src_rows + row) * src_stride
        dst += tl.load(dst_rows + row) * dst_stride
        for start in range(0, row_words, BLOCK):
            mask = start + offsets < row_words
            words = tl.load(src + start + offsets, mask=mask)
            tl.store(dst + start + offsets, words, mask=mask)


def copy_rows(src_bases: torch.Tensor, dst_bases: torch.Tensor, src_stride: int,
              dst_stride: int, row_words: int, src_rows: torch.Tensor, dst_rows: torch.Tensor,
              num_ctas: int = DEFAULT_CTAS) -> None:
    """For every plane p and i: dst plane p row dst_rows[i] = src plane p row src_rows[i].

    `src_bases` and `dst_bases` are int64 device tensors of [planes] addresses of int64 words;
    strides and `row_words` count int64 words; `src_rows` and `dst_rows` are int64 device
    tensors of equal length, and no two copies write one row. Queued on the current stream, no
    host synchronisation.
    """
    if src_rows.numel() != dst_rows.numel():
        raise ValueError(f"{src_rows.numel()} source rows against {dst_rows.numel()} "
                         "destination rows")
    if src_bases.numel() != dst_bases.numel():
        raise ValueError(f"{src_bases.numel()} source planes against {dst_bases.numel()} "
                         "destination planes")
    total = src_rows.numel() * src_bases.numel()
    if total == 0:
        return
    grid = (min(num_ctas, total),)
    _copy_rows_kernel[grid](src_bases, dst_bases, src_rows, dst_rows, src_rows.numel(),
                            src_bases.numel(), src_stride, dst_stride, row_words,
                            BLOCK=_BLOCK_WORDS)
