"""Time per call of each fused kernel against the torch ops it replaces, at decode sizes
(Llama-3.1-8B shapes, bf16). At one token both are bound by launch cost on the host.

    python -m tests.kernels.bench_fused_ops [--tokens 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from radixmesh.kernels.activation import silu_and_mul as fused_silu_and_mul
from radixmesh.kernels.fused_gate import set_fused_kernels
from radixmesh.kernels.rmsnorm import fused_add_rms_norm, rms_norm
from radixmesh.kernels.rotary import apply_rotary_inplace
from radixmesh.services.worker.models.layers import (
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    silu_and_mul,
)

Call = Callable[[], object]


def us_per_call(fn: Call, repeats: int = 200) -> float:
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats * 1e6


def cases(tokens: int) -> dict[str, tuple[Call, Call]]:
    """name -> (the torch layer code, the fused kernel)."""
    dev, dt = "cuda", torch.bfloat16
    norm = RMSNorm(4096, 1e-5).to(dev, dt)
    w, eps = norm.weight, norm.eps
    x, residual = (torch.randn(tokens, 4096, device=dev, dtype=dt) for _ in range(2))
    gate_up = torch.randn(tokens, 2 * 14336, device=dev, dtype=dt)  # the fused gate/up output
    cos, sin = RotaryEmbedding(128, 8192, 500000.0, None).to(dev)(torch.arange(tokens, device=dev))
    q = torch.randn(tokens, 32, 128, device=dev, dtype=dt)
    k = torch.randn(tokens, 8, 128, device=dev, dtype=dt)
    return {
        "rms_norm": (lambda: norm(x), lambda: rms_norm(x, w, eps)),
        "add_rms_norm": (lambda: norm(x, residual), lambda: fused_add_rms_norm(x, residual, w, eps)),
        "silu_and_mul": (lambda: silu_and_mul(gate_up), lambda: fused_silu_and_mul(gate_up)),
        "rotary": (lambda: apply_rotary(q, k, (cos, sin)),
                   lambda: apply_rotary_inplace(q, k, cos, sin)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1)
    args = parser.parse_args()
    set_fused_kernels(False)  # the layers' torch code for the first column
    with torch.inference_mode():
        for name, (unfused, fused) in cases(args.tokens).items():
            print(f"{name:>13}, {args.tokens} tokens: torch {us_per_call(unfused):6.1f} us, "
                  f"triton {us_per_call(fused):6.1f} us", flush=True)


if __name__ == "__main__":
    main()
