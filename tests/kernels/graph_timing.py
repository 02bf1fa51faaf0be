"""Timing one GPU call the way decode runs it: many calls captured in one CUDA graph, replayed,
so that launch cost is left out (the benches' shared clock)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def graph_time_us(fn: Callable[[], object], calls: int = 50, replays: int = 5) -> float:
    """Microseconds per call, from a CUDA graph of `calls` calls replayed `replays` times."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()  # warm-up outside capture (cuBLASLt picks its kernels, Triton compiles)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (replays * calls)
