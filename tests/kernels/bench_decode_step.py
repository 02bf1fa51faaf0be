"""Batch-1 decode step time through the engine, per attention backend (GPU, dummy weights).

    python -m tests.kernels.bench_decode_step [--model-path DIR] [--steps 64]

Without a model path it writes a Llama-3.1-8B config (no weights: `--load-format dummy`).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import torch
from transformers import LlamaConfig

from radixmesh.engine import Engine
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig

PROMPT = [5 + i % 500 for i in range(512)]  # 512 prompt tokens, inside any vocabulary


def ms_per_step(model_path: str, backend: str, steps: int) -> float:
    engine = Engine(WorkerConfig(model_path=model_path, load_format="dummy", dtype="bfloat16",
                                 attention_backend=backend, max_total_tokens=65536),
                    SchedulerConfig())
    body = {"input_ids": PROMPT, "max_new_tokens": steps, "ignore_eos": True, "temperature": 0}
    engine.generate([body | {"max_new_tokens": 8}])  # compile and warm up
    engine.submit("timed", body)
    engine.step()  # prefill (a radix-cache hit on the warm-up prompt)
    torch.cuda.synchronize()
    start = time.perf_counter()
    decoded = 0
    while engine.has_work:
        engine.step()
        decoded += 1
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / decoded * 1e3


def write_llama_8b_config(directory: str) -> str:
    LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                max_position_embeddings=8192, rms_norm_eps=1e-5, dtype="bfloat16",
                architectures=["LlamaForCausalLM"]).save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-path")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--backends", nargs="+", default=["torch", "triton"])
    args = parser.parse_args()
    model_path = args.model_path or write_llama_8b_config(tempfile.mkdtemp())
    for backend in args.backends:
        print(f"decode b=1 step, {backend}: {ms_per_step(model_path, backend, args.steps):.2f}"
              " ms", flush=True)
        gc.collect()  # the engine holds reference cycles; free its weights before the next
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
