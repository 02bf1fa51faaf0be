"""--enable-deterministic-inference: one request gives bitwise-equal logits (hence logprobs) and
the same tokens alone, inside batches of 8 and 64 other requests, after a prefix-cache hit and
through small prefill chunks, greedy and sampled with a seed (the real scheduler through the
in-process engine, on the CPU, fp32). Without the flag the same comparison shows differences on
this CPU: MKL's fp32 GEMM sums a row differently at other row counts."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from radixmesh.engine import Completion, Engine
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.batch_invariant import (
    CPU_ROW_BLOCK,
    BatchInvariantMatmul,
    blocked_mm,
)
from radixmesh.services.worker.config import WorkerConfig

NEW_TOKENS = 6
GREEDY = {"temperature": 0.0}
SEEDED = {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "seed": 77}


class Recorded:
    """Every logits row each request was sampled from, in step order (a real engine's worker
    reports them through `ModelRunner.logits_observer`)."""

    def __init__(self, engine: Engine) -> None:
        self.rows: dict[str, list[torch.Tensor]] = defaultdict(list)
        engine.runner.logits_observer = self._observe

    def _observe(self, rids: list[str], logits: torch.Tensor) -> None:
        for rid, row in zip(rids, logits, strict=True):
            self.rows[rid].append(row.detach().clone())

    def take(self, rid: str) -> torch.Tensor:
        return torch.stack(self.rows.pop(rid))


def run(engine: Engine, batches: list[dict[str, dict]], steps_between: int = 2
        ) -> dict[str, Completion]:
    """Submits each batch of rid -> body after `steps_between` steps of the previous one, so
    later requests prefill while earlier ones decode (mixed batches), then runs to the end."""
    completions: dict[str, Completion] = {}
    for index, batch in enumerate(batches):
        for rid, body in batch.items():
            engine.submit(rid, body)
            completions[rid] = Completion(rid)
        if index + 1 < len(batches):
            for _ in range(steps_between):
                for delta in engine.step():
                    completions[delta.rid].add(delta)
    engine.run_until_done(completions)
    return completions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("deterministic") / "llama", "llama")


def make_engine(model_dir: Path, deterministic: bool, **scheduler: object) -> Engine:
    worker = WorkerConfig(model_path=str(model_dir), device="cpu", dtype="float32",
                          enable_deterministic_inference=deterministic)
    return Engine(worker, SchedulerConfig(enable_mixed_chunk=True, **scheduler))


@pytest.fixture(scope="module")
def vocab(model_dir: Path) -> int:
    return make_engine(model_dir, False).info.vocab_size


def prompt(vocab: int, length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, vocab) for _ in range(length)]


def body(tokens: list[int], sampling: dict) -> dict:
    return {"input_ids": tokens, "max_new_tokens": NEW_TOKENS, "ignore_eos": True} | sampling


def others(vocab: int, count: int) -> list[dict]:
    """Neighbours of assorted lengths and sampling settings."""
    kinds = [GREEDY, {"temperature": 1.0, "seed": 5}, {"temperature": 0.7, "top_k": 8}]
    return [body(prompt(vocab, 3 + (7 * i) % 45, 1000 + i), kinds[i % len(kinds)])
            for i in range(count)]


TARGET_LEN = 37  # over two query blocks and a KV split boundary is crossed while decoding


def scenarios(vocab: int, sampling: dict) -> dict[str, list[dict[str, dict]]]:
    target = {"target": body(prompt(vocab, TARGET_LEN, 7), sampling)}
    eight, sixty_four = others(vocab, 8), others(vocab, 64)
    return {
        "alone": [target],
        "with 8": [{f"n{i}": b for i, b in enumerate(eight[:4])} | target,
                   {f"m{i}": b for i, b in enumerate(eight[4:])}],
        "with 64": [{f"n{i}": b for i, b in enumerate(sixty_four[:40])} | target,
                    {f"m{i}": b for i, b in enumerate(sixty_four[40:])}],
    }


def target_run(engine: Engine, batches: list[dict[str, dict]]
               ) -> tuple[list[int], torch.Tensor, int]:
    """The target's tokens, its logits rows and its prompt tokens served from the cache."""
    recorded = Recorded(engine)
    completion = run(engine, batches)["target"]
    assert completion.usage is not None
    return completion.token_ids, recorded.take("target"), completion.usage.cached_tokens


@pytest.fixture(scope="module")
def engines(model_dir: Path) -> Iterator[dict[str, Engine]]:
    built = {
        "plain": make_engine(model_dir, True, disable_radix_cache=True),
        "chunked": make_engine(model_dir, True, disable_radix_cache=True,
                               chunked_prefill_size=5),
        "cached": make_engine(model_dir, True),
        "unflagged": make_engine(model_dir, False, disable_radix_cache=True),
    }
    yield built
    for engine in built.values():
        assert not engine.has_work and engine.runner.num_requests == 0
        engine.scheduler.check_integrity()


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_same_bits_whatever_the_batch_the_cache_and_the_chunks(engines, vocab, sampling):
    runs = {name: target_run(engines["plain"], batches)
            for name, batches in scenarios(vocab, sampling).items()}
    target = scenarios(vocab, sampling)["alone"]
    runs["chunked by 5"] = target_run(engines["chunked"], target)
    # A sibling sharing the first 32 prompt tokens fills the radix cache first.
    sibling = prompt(vocab, TARGET_LEN, 7)[:32] + prompt(vocab, 9, 8)
    run(engines["cached"], [{"sibling": body(sibling, GREEDY)}])
    runs["prefix cached"] = target_run(engines["cached"], target)
    assert runs["prefix cached"][2] >= 32, "the prefix did not come from the cache"

    tokens, logits, cached = runs.pop("alone")
    assert cached == 0 and len(tokens) == NEW_TOKENS and logits.shape[0] == NEW_TOKENS
    logprobs = F.log_softmax(logits, dim=-1)
    for name, (other_tokens, other_logits, _) in runs.items():
        assert other_tokens == tokens, name
        assert torch.equal(other_logits, logits), f"{name}: logits differ"
        assert torch.equal(F.log_softmax(other_logits, dim=-1), logprobs), name


def test_without_the_flag_batching_changes_the_bits(engines, vocab):
    """The test above can fail: unflagged, the same runs differ in the last bits (and only
    there) on this CPU, where fp32 GEMMs of 1 and of 9+ rows sum in different orders."""
    engine = engines["unflagged"]
    batches = scenarios(vocab, GREEDY)
    _, alone, _ = target_run(engine, batches["alone"])
    _, batched, _ = target_run(engine, batches["with 8"])
    assert not torch.equal(alone, batched)
    torch.testing.assert_close(alone, batched, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(64, 256), (1024, 512)])
def test_blocked_products_give_each_row_the_same_bits_at_any_row_count(shape):
    k, n = shape
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(n, k, generator=generator)
    bias = torch.randn(n, generator=generator)
    x = torch.randn(80, k, generator=generator)
    row = x[40:41]
    with torch.inference_mode(), BatchInvariantMatmul(CPU_ROW_BLOCK):
        alone = F.linear(row, weight, bias)
        for rows in (2, 3, 9, 16, 17, 40):
            # The row comes first, then last: another index of another block each time.
            assert torch.equal(F.linear(x[40:40 + rows], weight, bias)[:1], alone), rows
            assert torch.equal(F.linear(x[41 - rows:41], weight, bias)[-1:], alone), rows
            assert torch.equal((x[40:40 + rows] @ weight.t())[:1],
                               blocked_mm(row, weight.t(), CPU_ROW_BLOCK)), rows
    # Still the same product: only the summation order moved (fp32 over K terms of ~1).
    torch.testing.assert_close(alone, F.linear(row, weight, bias), rtol=1e-4, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_the_gpu_too_with_triton_attention(tmp_path: Path, vocab: int) -> None:
    """The same guarantee on a GPU (Triton attention unsplit, GEMMs in the one-launch invariant
    kernel, CUDA graphs on), and without the flag the same runs differ there. The model is wider than the
    CPU tests' (products over K = 1024): over the tiny one's 64 terms cuBLAS summed every batch
    size alike on an H100, and the unflagged runs did not differ."""
    model_dir = make_model(tmp_path / "wide", "llama", hidden_size=1024, num_heads=16,
                           num_kv_heads=4, intermediate_size=2816, vocab_size=vocab)

    def gpu_engine(deterministic: bool, **scheduler: object) -> Engine:
        worker = WorkerConfig(model_path=str(model_dir), device="cuda", dtype="bfloat16",
                              attention_backend="triton", max_total_tokens=8192,
                              cuda_graph_max_bs=80,
                              enable_deterministic_inference=deterministic)
        return Engine(worker, SchedulerConfig(enable_mixed_chunk=True, **scheduler))

    batches = scenarios(vocab, SEEDED)
    flagged = gpu_engine(True, disable_radix_cache=True)
    tokens, logits, _ = target_run(flagged, batches["alone"])
    for name in ("with 8", "with 64"):
        other_tokens, other_logits, _ = target_run(flagged, batches[name])
        assert other_tokens == tokens and torch.equal(other_logits, logits), name
    chunked = gpu_engine(True, disable_radix_cache=True, chunked_prefill_size=5)
    assert torch.equal(target_run(chunked, batches["alone"])[1], logits)
    cached = gpu_engine(True)
    sibling = prompt(vocab, TARGET_LEN, 7)[:32] + prompt(vocab, 9, 8)
    run(cached, [{"sibling": body(sibling, GREEDY)}])
    cached_tokens, cached_logits, hit = target_run(cached, batches["alone"])
    assert hit >= 32 and cached_tokens == tokens and torch.equal(cached_logits, logits)
    unflagged = gpu_engine(False, disable_radix_cache=True)
    _, alone, _ = target_run(unflagged, batches["alone"])
    _, batched, _ = target_run(unflagged, batches["with 64"])
    assert not torch.equal(alone, batched)


def test_a_quantized_model_is_refused_on_a_gpu_only() -> None:
    from radixmesh.services.worker.batch_invariant import check_quantization

    with pytest.raises(ValueError, match="cannot run with --enable-deterministic-inference"):
        check_quantization(True, torch.device("cuda", 0))
    check_quantization(True, torch.device("cpu"))  # dequantized into the covered F.linear
    check_quantization(False, torch.device("cuda", 0))
