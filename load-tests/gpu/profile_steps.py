"""How close a step comes to the device: achieved GEMM TFLOP/s for prefill chunks, achieved
bandwidth for decode steps, and where the kernel time goes (GEMMs, attention, the rest).

    python3 -P load-tests/gpu/profile_steps.py MODEL_DIR --mode prefill \
        [--batch-size 36] [--prompt-len 226] [--chunked-prefill-size 8192]     (on the GPU)
    python3 -P load-tests/gpu/profile_steps.py MODEL_DIR --mode decode --batch-size 256

The throughput ceiling (load-tests/ceiling) fits our sharegpt-like run to 537 TFLOP/s sustained
on an H100 that multiplies at 798: this says which steps lose it. `prefill` submits
`--batch-size` prompts of `--prompt-len` distinct tokens and profiles their prefill steps;
`decode` prefills them first and profiles `--steps` decode steps of the whole batch. FLOPs and
bytes come from the model's sizes (`radixmesh/bench/ceiling.py`); kernel names are sorted into
GEMMs (cuBLAS, CUTLASS), attention (FlashInfer, our Triton attention) and the rest. Prints one
JSON object (use `--out FILE` to keep it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from radixmesh.bench.ceiling import ModelShape
from radixmesh.engine import Engine
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.model_config import ModelConfig

GEMM_NAMES = ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "addmm", "mm")
ATTENTION_NAMES = ("flashinfer", "prefill", "decode", "attention", "attn")


def shape_of(model_path: str) -> ModelShape:
    config = ModelConfig.from_pretrained(model_path)
    return ModelShape(config.hidden_size, config.num_hidden_layers,
                      config.num_attention_heads, config.num_key_value_heads, config.head_dim,
                      config.intermediate_size, config.vocab_size)


def kernel_split(trace: torch.profiler.profile, device: bool) -> dict[str, float]:
    """Kernel milliseconds by kind (self time of device kernels on a GPU, of ops on a CPU)."""
    split = {"gemm": 0.0, "attention": 0.0, "other": 0.0}
    for event in trace.key_averages():
        micros = event.self_device_time_total if device else event.self_cpu_time_total
        if micros <= 0 or (not device and not event.key.startswith("aten::")):
            continue
        name = event.key.lower()
        kind = ("attention" if any(part in name for part in ATTENTION_NAMES) else
                "gemm" if any(part in name for part in GEMM_NAMES) else "other")
        split[kind] += micros / 1e3
    return split


def run_profiled(engine: Engine, until_done: bool) -> tuple[float, int, torch.profiler.profile]:
    """Steps the engine (all its work, or while prompts wait) under the profiler: wall ms,
    steps run, the trace."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    steps, start = 0, time.perf_counter()
    with torch.profiler.profile(activities=activities) as trace:
        while engine.has_work if until_done else engine.scheduler.waiting:
            engine.step()
            steps += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3, steps, trace


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_path")
    parser.add_argument("--mode", choices=("prefill", "decode"), required=True)
    parser.add_argument("--batch-size", type=int, default=36)
    parser.add_argument("--prompt-len", type=int, default=226)
    parser.add_argument("--steps", type=int, default=32, help="decode steps profiled")
    parser.add_argument("--chunked-prefill-size", type=int, default=8192)
    parser.add_argument("--attention-backend", default="auto")
    parser.add_argument("--out", type=Path)
    return parser.parse_args()


def engine_at_the_steps(args: argparse.Namespace, on_gpu: bool) -> tuple[Engine, int]:
    """A warmed-up engine with the batch submitted (and, for `decode`, prefilled): the steps
    to profile are next. Also how many tokens each request asks."""
    engine = Engine(WorkerConfig(model_path=args.model_path, load_format="dummy",
                                 dtype="bfloat16" if on_gpu else "float32",
                                 attention_backend=args.attention_backend),
                    SchedulerConfig(chunked_prefill_size=args.chunked_prefill_size))
    prompt = list(range(6, 5 + args.prompt_len))
    sampling = {"ignore_eos": True, "temperature": 0}
    engine.submit("warm", {"input_ids": [5, *prompt], "max_new_tokens": 4, **sampling})
    while engine.has_work:
        engine.step()
    new_tokens = args.steps + 4 if args.mode == "decode" else 1
    for i in range(args.batch_size):  # distinct first tokens: no prompt reuses another's KV
        engine.submit(f"r{i}", {"input_ids": [7 + args.prompt_len + i, *prompt],
                                "max_new_tokens": new_tokens, **sampling})
    if args.mode == "decode":
        while engine.scheduler.waiting:
            engine.step()
        for _ in range(2):  # the last prefill is in flight as the queue empties
            engine.step()
    return engine, new_tokens


def step_work(args: argparse.Namespace, shape: ModelShape, steps: int,
              new_tokens: int) -> tuple[int, int, int]:
    """(tokens through the layers, FLOPs, bytes read) of the steps profiled."""
    if args.mode == "prefill":
        tokens = args.batch_size * args.prompt_len
        return tokens, tokens * shape.flops_per_token + args.batch_size * (
            shape.lm_head_flops + shape.attention_flops(args.prompt_len, 0)), 0
    # Decode attention is a read, not arithmetic: its bytes count, not its FLOPs.
    tokens = args.batch_size * steps
    context = args.prompt_len + new_tokens - steps // 2  # the mean of the steps profiled
    return tokens, tokens * (shape.flops_per_token + shape.lm_head_flops), steps * (
        shape.weight_bytes + args.batch_size * context * shape.kv_bytes_per_token)


def main() -> None:
    args = parse_args()
    shape = shape_of(args.model_path)
    on_gpu = torch.cuda.is_available()
    engine, new_tokens = engine_at_the_steps(args, on_gpu)
    wall_ms, steps, trace = run_profiled(engine, until_done=args.mode == "decode")
    tokens, flops, read_bytes = step_work(args, shape, steps, new_tokens)
    split = kernel_split(trace, on_gpu)
    kernel_ms = sum(split.values())
    report = {
        "mode": args.mode, "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "batch_size": args.batch_size, "prompt_len": args.prompt_len, "steps": steps,
        "chunked_prefill_size": args.chunked_prefill_size,
        "wall_ms_per_step": round(wall_ms / steps, 3),
        "kernel_ms_per_step": {kind: round(ms / steps, 3) for kind, ms in split.items()},
        "gpu_idle_share": round(1 - kernel_ms / wall_ms, 3) if on_gpu else None,
        "achieved_tflops_over_kernels": round(flops / (kernel_ms / 1e3) / 1e12, 1),
        "gemm_tflops": round(tokens * shape.flops_per_token / (split["gemm"] / 1e3) / 1e12, 1)
        if split["gemm"] else None,
        "achieved_read_tbs_over_kernels": round(read_bytes / (kernel_ms / 1e3) / 1e12, 2)
        if read_bytes else None,
        "note": "profiled, so slower than a bench; kernel time is summed per kind",
    }
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
