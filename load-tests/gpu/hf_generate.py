"""The naive baseline of design §8: HF transformers `generate` on the benchmark's model shape.

    python3 load-tests/gpu/hf_generate.py --model-path /tmp/llama-3.1-8b-dummy --output-dir OUT

Builds `LlamaForCausalLM` from the directory's config.json with random weights (nothing is
downloaded), then for each batch size: one short warm-up `generate`, then one timed greedy
`generate` of random prompts (`--input-len` ids each) for exactly `--max-new-tokens` tokens
(min_new_tokens = max_new_tokens, so EOS cannot stop a row early). Output throughput is
batch x new tokens / wall time of the timed call, prefill included, as `radixmesh bench`
counts it. One result JSON per batch size (workload `hf-generate-b<N>`, path `hf`) in the
format of radixmesh/bench/results.py.

A timed call that runs past `--max-seconds` is stopped there and measured on the tokens it
made (`stopped_early` in the JSON); one that runs out of memory is recorded as an error.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, StoppingCriteria

from radixmesh.bench.results import build_result, local_device, write_result
from radixmesh.bench.workloads import FIRST_TOKEN_ID

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class WallClockLimit(StoppingCriteria):
    """Stops every row once `seconds` have passed since `start()`."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started = seconds, time.perf_counter()
        self.hit = False

    def start(self) -> None:
        self.started, self.hit = time.perf_counter(), False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor,
                 **kwargs: object) -> torch.BoolTensor:
        self.hit = time.perf_counter() - self.started > self.seconds
        return torch.full((input_ids.shape[0],), self.hit, dtype=torch.bool,
                          device=input_ids.device)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, required=True,
                        help="a directory with a Llama config.json (weights are not read)")
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--warmup-tokens", type=int, default=4,
                        help="new tokens of the warm-up call at each batch size")
    parser.add_argument("--max-seconds", type=float, default=50.0,
                        help="stop a timed call after this long (caps the GPU time)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--cache-implementation", default=None,
                        help="generate's cache_implementation, e.g. static (default: dynamic)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the prompts' token ids")
    return parser.parse_args(argv)


def build_model(model_path: Path, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    """Random weights made directly on `device` in `dtype`: no fp32 copy on the host."""
    config = LlamaConfig.from_pretrained(model_path)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model.to(device).eval()  # a no-op unless a transformers version ignored the context


def random_prompts(batch: int, input_len: int, vocab_size: int, seed: int,
                   device: str) -> torch.Tensor:
    ids = np.random.default_rng(seed).integers(FIRST_TOKEN_ID, vocab_size, (batch, input_len))
    return torch.from_numpy(ids).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate(model: LlamaForCausalLM, input_ids: torch.Tensor, new_tokens: int,
             args: argparse.Namespace, limit: WallClockLimit | None = None) -> int:
    """Greedy generate of exactly `new_tokens` (fewer only if `limit` hits); returns how many."""
    eos = model.config.eos_token_id
    config = GenerationConfig(
        do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
        eos_token_id=eos, pad_token_id=eos[0] if isinstance(eos, list) else eos,
        cache_implementation=args.cache_implementation)
    output = model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                            generation_config=config,
                            stopping_criteria=[limit] if limit else None)
    return output.shape[1] - input_ids.shape[1]


def measure(model: LlamaForCausalLM, batch: int, args: argparse.Namespace) -> dict:
    """The metrics of one batch size, or {"error": ...} when it does not fit."""
    input_ids = random_prompts(batch, args.input_len, model.config.vocab_size, args.seed,
                               args.device)
    limit = WallClockLimit(args.max_seconds)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        with torch.inference_mode():
            generate(model, input_ids, args.warmup_tokens, args)
            sync(args.device)
            limit.start()
            started = time.perf_counter()
            made = generate(model, input_ids, args.max_new_tokens, args, limit)
            sync(args.device)
            seconds = time.perf_counter() - started
    except torch.OutOfMemoryError as error:
        return {"error": f"out of memory: {str(error).splitlines()[0]}"}
    finally:
        del input_ids
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    outputs = batch * made
    return {"output_throughput": outputs / seconds,
            "total_throughput": (outputs + batch * args.input_len) / seconds,
            "duration_s": seconds, "num_requests": batch,
            "total_input_tokens": batch * args.input_len, "total_output_tokens": outputs,
            "new_tokens_per_request": made, "mean_step_ms": 1000 * seconds / made,
            "stopped_early": limit.hit,
            "peak_memory_gib": (torch.cuda.max_memory_allocated() / 2**30
                                if args.device.startswith("cuda") else None)}


def save(batch: int, metrics: dict, args: argparse.Namespace, model: LlamaForCausalLM) -> Path:
    error = metrics.pop("error", None)
    if error:
        metrics = {"output_throughput": None}
    device = local_device(use_cuda=args.device.startswith("cuda"))
    result = build_result(
        f"hf-generate-b{batch}", "hf", device, sys.argv,
        {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        model=str(args.model_path), batch_size=batch, input_len=args.input_len,
        max_new_tokens=args.max_new_tokens, dtype=args.dtype,
        attn_implementation=model.config._attn_implementation,
        cache_implementation=args.cache_implementation or "dynamic",
        transformers=transformers.__version__, torch=torch.__version__,
        **({"error": error} if error else {}))
    result["command"] = shlex.join(["python3", "load-tests/gpu/hf_generate.py", *sys.argv[1:]])
    return write_result(result, args.output_dir, device)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    model = build_model(args.model_path, DTYPES[args.dtype], args.device)
    print(f"built {args.model_path} on {args.device} in {time.perf_counter() - started:.1f}s",
          flush=True)
    failed = 0
    for batch in args.batch_sizes:
        metrics = measure(model, batch, args)
        if "error" in metrics:
            failed += 1
            print(f"hf generate b={batch}: {metrics['error']}", flush=True)
        else:
            print(f"hf generate b={batch}: {metrics['output_throughput']:.1f} output tok/s "
                  f"({metrics['new_tokens_per_request']} new tokens x {batch} in "
                  f"{metrics['duration_s']:.1f}s"
                  f"{', stopped early' if metrics['stopped_early'] else ''})", flush=True)
        print(f"result: {save(batch, metrics, args, model)}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
