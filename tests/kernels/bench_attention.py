"""Times one attention layer call, Triton backend against torch, at Llama-3.1-8B shape (bf16).

Run on a GPU: `python -m tests.kernels.bench_attention`. Prints one line per case: the GPU-side
time of a layer call as `do_bench` sees it (which includes host launch time when the host is
the bottleneck), the host time alone (calls queued without synchronising), and the KV bytes
read per call as an achieved bandwidth.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch
import triton.testing

from radixmesh.kernels.attention import paged_decode_attention
from radixmesh.kernels.kv_store import store_kv
from radixmesh.services.worker.attention.base import AttentionBackend
from radixmesh.services.worker.attention.torch_backend import TorchAttentionBackend
from radixmesh.services.worker.attention.triton_backend import TritonAttentionBackend
from tests.kernels.paged_cases import PagedCase, Shape, make_case

LLAMA_8B = Shape(num_heads=32, num_kv_heads=8, head_dim=128, page_size=16, dtype=torch.bfloat16)
DECODES = [(1, 512), (1, 4096), (1, 16384), (32, 1024), (128, 512)]
EXTENDS = [[(0, 2048)], [(1024, 512)] * 4]
HOST_CALLS = 50


def time_layer(case: PagedCase, backend_class: type[AttentionBackend],
               decode_splits: int | None = None) -> tuple[float, float]:
    """(ms per call by do_bench, host ms per call) of store + attention for one layer;
    `decode_splits` overrides the Triton backend's split-K choice."""
    backend = backend_class(case.pool)
    case.batch.attn_backend = backend
    backend.prepare(case.batch)
    if decode_splits is not None:
        backend._meta = dataclasses.replace(backend._meta, decode_splits=decode_splits)
    spec = case.shape.spec()

    def call() -> torch.Tensor:
        return backend.forward(case.q, case.k, case.v, spec, case.batch)

    gpu_ms = triton.testing.do_bench(call, warmup=10, rep=100)
    return gpu_ms, host_us(call) / 1e3


def kv_bytes(case: PagedCase) -> int:
    shape = case.shape
    per_token = 2 * shape.num_kv_heads * shape.head_dim * case.pool.keys(0).element_size()
    return sum(case.batch.seq_lens_cpu) * per_token


def report(label: str, case: PagedCase) -> None:
    line = [f"{label:<34}"]
    for backend_class in (TritonAttentionBackend, TorchAttentionBackend):
        gpu_ms, host_ms = time_layer(case, backend_class)
        gbps = kv_bytes(case) / gpu_ms / 1e6
        line.append(f"{backend_class.name}: {gpu_ms * 1e3:8.1f} us (host {host_ms * 1e3:6.1f} us, "
                    f"{gbps:6.0f} GB/s)")
    print(" | ".join(line), flush=True)


def host_us(fn: Callable[[], object]) -> float:
    """Host microseconds per call of `fn`, calls queued without synchronising."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(HOST_CALLS):
        fn()
    elapsed = (time.perf_counter() - start) / HOST_CALLS * 1e6
    torch.cuda.synchronize()
    return elapsed


def bench_launch_costs() -> None:
    """Host cost of each launch a decode layer makes (b=1, len 4096)."""
    case = make_case(LLAMA_8B, [], [4096], "cuda")
    keys, values, batch = case.pool.keys(0), case.pool.values(0), case.batch
    out = torch.empty_like(case.q)

    def decode(splits: int) -> Callable[[], object]:
        return lambda: paged_decode_attention(case.q, keys, values, out, batch.page_table,
                                              batch.seq_lens, 16, 0.1, num_splits=splits)

    costs = {"store_kv": host_us(lambda: store_kv(keys, values, batch.out_cache_loc, case.k,
                                                  case.v)),
             "decode 1 split": host_us(decode(1)), "decode 4 splits": host_us(decode(4)),
             "torch.empty_like": host_us(lambda: torch.empty_like(case.q))}
    print("host us per call: " + ", ".join(f"{name} {us:.1f}" for name, us in costs.items()),
          flush=True)


def bench_kv_store(tokens: int) -> None:
    """One layer's KV write through torch's two indexing paths."""
    cache = torch.zeros(65536, 8, 128, dtype=torch.bfloat16, device="cuda")
    cache_v = torch.zeros_like(cache)
    slots = torch.randperm(65536, device="cuda")[:tokens]
    k = torch.randn(tokens, 8, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)

    def index_copy() -> None:
        cache.index_copy_(0, slots, k)
        cache_v.index_copy_(0, slots, v)

    def index_put() -> None:
        cache[slots] = k
        cache_v[slots] = v

    timings = [triton.testing.do_bench(fn) * 1e3 for fn in (index_copy, index_put)]
    print(f"kv store {tokens:5d} tokens: index_copy_ {timings[0]:6.1f} us | index_put "
          f"{timings[1]:6.1f} us", flush=True)


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    for batch, seq_len in DECODES:
        case = make_case(LLAMA_8B, [], [seq_len] * batch, "cuda")
        report(f"decode b={batch} len={seq_len}", case)
    for extends in EXTENDS:
        case = make_case(LLAMA_8B, extends, [], "cuda")
        report(f"extend {len(extends)}x(prefix {extends[0][0]}, new {extends[0][1]})", case)
    case = make_case(LLAMA_8B, [(0, 256)], [1024] * 31, "cuda")
    report("mixed 1x256 new + 31 decodes len 1024", case)
    case = make_case(LLAMA_8B, [], [16384], "cuda")
    for splits in (1, 4, 16):
        gpu_ms, _ = time_layer(case, TritonAttentionBackend, decode_splits=splits)
        print(f"decode b=1 len=16384 triton with {splits:2d} splits: {gpu_ms * 1e3:8.1f} us",
              flush=True)
    for tokens in (1, 128, 8192):
        bench_kv_store(tokens)
    bench_launch_costs()


if __name__ == "__main__":
    main()
