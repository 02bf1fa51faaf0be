"""Greedy output equals HF transformers `generate`, token for token, in fp32."""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from tests.engine.conftest import ARCHITECTURES

MAX_NEW_TOKENS = 12

# Each case is a set of engine flags; all must reproduce HF exactly.
CASES = {
    "radix": {},
    "no-radix": {"disable_radix_cache": True},
    "chunked": {"chunked_prefill_size": 8},
    "page4": {"page_size": 4},
    "page4-chunked-lpm": {"page_size": 4, "chunked_prefill_size": 12, "schedule_policy": "lpm"},
    "retract": {"max_total_tokens": 96, "page_size": 4},
    "mixed-chunk": {"enable_mixed_chunk": True, "chunked_prefill_size": 16, "page_size": 4},
}


def mixed_prompts(vocab_size: int) -> list[list[int]]:
    """Mixed lengths, two families sharing long prefixes, and a few loners."""
    rng = random.Random(1)
    draw = lambda n: [rng.randrange(5, vocab_size) for _ in range(n)]  # noqa: E731
    system_a, system_b = draw(17), draw(9)
    prompts = [system_a + draw(n) for n in (1, 5, 13)]
    prompts += [system_b + draw(n) for n in (3, 22)]
    prompts += [system_a[:6] + draw(4), draw(1), draw(30)]
    return prompts


@cache
def hf_greedy(model_path: Path, prompt: tuple[int, ...], max_new_tokens: int) -> list[int]:
    model = hf_model(model_path)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False,
                              eos_token_id=None, pad_token_id=0)
    output = model.generate(torch.tensor([prompt]), generation_config=config)
    return output[0, len(prompt):].tolist()


@cache
def hf_model(model_path: Path) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    # generate() merges the checkpoint's generation config into ours; this is how HF runs
    # past EOS, matching our ignore_eos.
    model.generation_config.eos_token_id = None
    return model


def greedy_bodies(prompts: list[list[int]]) -> list[dict]:
    return [{"input_ids": p, "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0,
             "ignore_eos": True} for p in prompts]


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("case", CASES)
def test_greedy_matches_hf(arch, case, tiny_models, make_engine):
    model_path = tiny_models[arch]
    engine = make_engine(model_path, **CASES[case])
    prompts = mixed_prompts(engine.info.vocab_size)
    expected = [hf_greedy(model_path, tuple(p), MAX_NEW_TOKENS) for p in prompts]
    # Twice through one engine: the second pass serves prompts from the radix cache.
    for round_ in range(2):
        completions = engine.generate(greedy_bodies(prompts))
        for prompt, want, got in zip(prompts, expected, completions, strict=True):
            assert got.token_ids == want, f"{case} round {round_}: prompt {prompt[:8]}..."
            assert got.finish.kind.value == "length"
    stats = engine.scheduler.stats
    if case == "retract":
        assert stats.num_retractions > 0, "the small pool should have forced a retraction"
    if CASES[case].get("disable_radix_cache"):
        assert stats.num_cached_tokens == 0
    elif case != "retract":  # its pool is too small to keep the first round's prefixes
        assert stats.cache_hit_rate > 0.3, "the second round should hit the cache"


def test_eos_stops_like_hf(tiny_models, make_engine):
    """Without ignore_eos both stop at the first EOS; force one by making it a stop token."""
    model_path = tiny_models["llama"]
    engine = make_engine(model_path)
    prompt = mixed_prompts(engine.info.vocab_size)[0]
    reference = hf_greedy(model_path, tuple(prompt), MAX_NEW_TOKENS)
    stop_at = reference[5]
    [completion] = engine.generate([{"input_ids": prompt, "max_new_tokens": MAX_NEW_TOKENS,
                                     "temperature": 0, "stop_token_ids": [stop_at]}])
    first = reference.index(stop_at)
    assert completion.token_ids == reference[:first + 1]
    assert completion.finish.kind.value == "stop" and completion.finish.matched == stop_at
