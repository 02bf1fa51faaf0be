"""FlashInfer inside real (small, random) models in bf16.

Greedy tokens are not compared with the torch backend's: in bf16, logits of a random model tie
or nearly tie often enough that any two correct kernels (summing in different orders) pick
different tokens somewhere in a long generation. Instead the models' logits are compared under
teacher forcing, through chunked prefill over a cached prefix, a mixed step and decodes: both
backends in bf16 are held against the torch backend in fp32, and FlashInfer's error must be no
worse than the torch backend's own bf16 error (a masking or paging bug makes it many times
worse). The engine test then runs whole generations through the scheduler with FlashInfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.attention import ATTENTION_BACKENDS, make_attention_backend
from radixmesh.services.worker.config import WorkerConfig
from radixmesh.services.worker.forward_batch import ForwardBatch, ForwardMode
from radixmesh.services.worker.kv_pool import KVPool
from radixmesh.services.worker.loader import load_model
from radixmesh.services.worker.model_config import ModelConfig

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif("flashinfer" not in ATTENTION_BACKENDS,
                                 reason="needs a CUDA device and flashinfer")]

MODELS = {
    # head_dim 64, 4 query heads per KV head: decodes on tensor cores
    "llama-gqa": dict(arch="llama", hidden_size=512, num_heads=8, num_kv_heads=2, num_layers=2),
    # head_dim 64, no GQA; layers 2 and 3 slide over 24 positions, so a pass has two layer kinds
    "qwen2-sliding": dict(arch="qwen2", hidden_size=256, num_heads=4, num_kv_heads=4,
                          num_layers=4, sliding_window=24),
}


@dataclass
class Sequence:
    tokens: list[int]
    pages: list[int]


# One step: (sequence, first new position, end) per row, extends before decodes.
Step = list[tuple[int, int, int]]
STEPS: list[tuple[Step, int]] = [
    ([(0, 0, 48), (1, 0, 30)], 2),           # two prefills
    ([(0, 48, 100), (1, 30, 31)], 1),        # an extend over a cached prefix next to a decode
    *[([(0, 100 + i, 101 + i), (1, 31 + i, 32 + i)], 0) for i in range(12)],  # decodes
]


def make_sequences(vocab_size: int, page_size: int) -> tuple[list[Sequence], int]:
    """Two token sequences on shuffled pages; returns them and the pool's page count."""
    gen = torch.Generator().manual_seed(0)
    lengths = [112, 43]
    counts = [-(-n // page_size) for n in lengths]
    num_pages = sum(counts) + 3
    shuffled = (torch.randperm(num_pages, generator=gen) + 1).tolist()
    sequences = []
    for length, count in zip(lengths, counts, strict=True):
        tokens = torch.randint(0, vocab_size, (length,), generator=gen).tolist()
        sequences.append(Sequence(tokens, shuffled[:count]))
        shuffled = shuffled[count:]
    return sequences, num_pages


def make_batch(sequences: list[Sequence], step: Step, num_extends: int, pool: KVPool,
               backend) -> ForwardBatch:
    page_size = pool.page_size
    ids, positions, slots, starts, last = [], [], [], [], []
    for seq_id, start, end in step:
        seq = sequences[seq_id]
        starts.append(len(ids))
        ids += seq.tokens[start:end]
        positions += range(start, end)
        slots += [seq.pages[p // page_size] * page_size + p % page_size for p in range(start, end)]
        last.append(len(ids) - 1)
    width = max(len(sequences[seq_id].pages) for seq_id, _, _ in step)
    table = [sequences[s].pages + [0] * (width - len(sequences[s].pages)) for s, _, _ in step]
    mode = (ForwardMode.DECODE if num_extends == 0 else
            ForwardMode.EXTEND if num_extends == len(step) else ForwardMode.MIXED)

    def on_device(values: list, dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device="cuda")

    return ForwardBatch(
        mode=mode, input_ids=on_device(ids, torch.int64),
        positions=on_device(positions, torch.int64), out_cache_loc=on_device(slots, torch.int64),
        seq_lens=on_device([end for _, _, end in step], torch.int32),
        extend_lens=on_device([end - start for _, start, end in step], torch.int32),
        extend_starts=on_device(starts, torch.int32), page_table=on_device(table, torch.int32),
        logits_indices=on_device(last, torch.int64), seq_lens_cpu=[end for _, _, end in step],
        extend_lens_cpu=[end - start for _, start, end in step], num_extends=num_extends,
        attn_backend=backend, kv_pool=pool)


@torch.inference_mode()
def teacher_forced_logits(model_dir: Path, dtype: str, backend_name: str,
                          page_size: int) -> torch.Tensor:
    """The logits of every step's last token per row, all steps stacked: [rows, vocab] fp32."""
    config = ModelConfig.from_pretrained(model_dir)
    model = load_model(config, model_dir, "auto", dtype, "cuda")
    sequences, num_pages = make_sequences(config.vocab_size, page_size)
    pool = KVPool(num_pages, page_size, config.num_hidden_layers, config.num_key_value_heads,
                  config.head_dim, getattr(torch, dtype), "cuda")
    backend = make_attention_backend(backend_name, pool)
    logits = []
    for step, num_extends in STEPS:
        batch = make_batch(sequences, step, num_extends, pool, backend)
        backend.prepare(batch)
        hidden = model(batch)
        logits.append(model.compute_logits(hidden[batch.logits_indices]))
    return torch.cat(logits)


@pytest.mark.parametrize("page_size", [1, 16])
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_logits_as_accurate_as_torch_backend_in_bf16(tmp_path, model_name, page_size):
    options = dict(MODELS[model_name])
    # bf16 weights, so that the fp32 reference runs the very same weights
    model = make_model(tmp_path / model_name, options.pop("arch"), dtype="bfloat16", **options)
    reference = teacher_forced_logits(model, "float32", "torch", page_size)
    torch_error = (teacher_forced_logits(model, "bfloat16", "torch", page_size)
                   - reference).abs().mean()
    got = teacher_forced_logits(model, "bfloat16", "flashinfer", page_size)
    flashinfer_error = (got - reference).abs().mean()
    assert got.shape == reference.shape
    assert flashinfer_error <= 1.5 * torch_error, (flashinfer_error, torch_error)


PROMPTS = ["The quick brown fox jumps over the lazy dog. " * 4 + "Once upon a time",
           "The quick brown fox jumps over the lazy dog. " * 4 + "In a galaxy far away", "Hello",
           "Paged attention keeps keys and values in fixed-size pages " * 6]


def generate(model: Path, page_size: int) -> list[list[int]]:
    engine = Engine(
        WorkerConfig(model_path=str(model), device="cuda", attention_backend="flashinfer",
                     dtype="bfloat16", page_size=page_size, max_total_tokens=8192,
                     cuda_graph_max_bs=8),  # a few prompts: 67 graph captures would be slow
        # Small chunks: prompts are prefilled in pieces over cached prefixes, next to decodes.
        SchedulerConfig(chunked_prefill_size=48))
    bodies = [{"text": text, "max_new_tokens": 40, "temperature": 0, "ignore_eos": True}
              for text in PROMPTS]
    # Twice: the second round's prompts hit the radix cache (extends over a cached prefix).
    outputs = [c.token_ids for c in engine.generate(bodies) + engine.generate(bodies)]
    assert engine.runner.backend.name == "flashinfer"
    return outputs


@pytest.mark.parametrize("page_size", [1, 16])
def test_engine_generates_with_flashinfer(tmp_path, page_size):
    """Whole generations run, and rerun identically: nothing is read from stale or unplanned
    memory (which would make the tokens vary from run to run)."""
    options = dict(MODELS["qwen2-sliding"])
    model = make_model(tmp_path / "model", options.pop("arch"), dtype="bfloat16", **options)
    first = generate(model, page_size)
    assert all(len(ids) == 40 for ids in first)
    assert generate(model, page_size) == first
    torch.cuda.empty_cache()
