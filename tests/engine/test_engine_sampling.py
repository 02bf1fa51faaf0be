"""Sampling through the whole engine: a seed fixes a request's output wherever it runs, and
penalties change what greedy decoding would repeat."""

from __future__ import annotations

import random

import pytest

from radixmesh.shared.errors import InvalidRequestError

MAX_NEW_TOKENS = 16
SAMPLED = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.8, "top_p": 0.9, "top_k": 20,
           "ignore_eos": True}
PENALTIES = {"frequency_penalty": 0.5, "presence_penalty": 0.3, "repetition_penalty": 1.3}


def draw_prompts(vocab_size: int, lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab_size) for _ in range(n)] for n in lengths]


def neighbours(vocab_size: int) -> list[dict]:
    """Requests to share a batch with: unseeded and seeded, greedy, sampled and penalized."""
    prompts = draw_prompts(vocab_size, [3, 9, 17, 6, 11, 25], seed=1)
    kinds = [{"temperature": 1.0}, {"temperature": 1.2, "seed": 3, "min_p": 0.05},
             {"temperature": 0}, {"temperature": 0.5, "top_k": 5} | PENALTIES,
             {"temperature": 0.9, "seed": 99, "top_p": 0.5}, {"temperature": 1.0, "seed": 1234}]
    return [{"input_ids": prompt, "max_new_tokens": 24, "ignore_eos": True} | kind
            for prompt, kind in zip(prompts, kinds, strict=True)]


@pytest.mark.parametrize("extra", [{}, PENALTIES], ids=["plain", "penalties"])
def test_seeded_output_is_the_same_alone_and_in_any_batch(extra, tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    [prompt] = draw_prompts(engine.info.vocab_size, [12])
    target = SAMPLED | extra | {"input_ids": prompt, "seed": 2024}
    [alone] = engine.generate([target])
    assert len(alone.token_ids) == MAX_NEW_TOKENS

    [cached] = engine.generate([target])  # the prompt now comes from the radix cache
    others = neighbours(engine.info.vocab_size)
    batch = engine.generate(others[:3] + [target] + others[3:])
    # The worker's random_seed only seeds requests that bring none.
    [elsewhere] = make_engine(tiny_models["llama"], random_seed=7).generate([target])
    for completion in (cached, batch[3], elsewhere):
        assert completion.token_ids == alone.token_ids


def test_seeded_outputs_survive_retraction(tiny_models, make_engine):
    """Retracted requests recompute their KV and resume; their draws must not change."""
    roomy = make_engine(tiny_models["llama"])
    prompts = draw_prompts(roomy.info.vocab_size, [12, 3, 9, 17, 6, 11])
    # Every request is seeded, so whichever the scheduler retracts is checked.
    bodies = [SAMPLED | (PENALTIES if index % 2 else {}) | {"input_ids": prompt, "seed": index}
              for index, prompt in enumerate(prompts)]
    expected = [roomy.generate([body])[0].token_ids for body in bodies]

    tight = make_engine(tiny_models["llama"], max_total_tokens=64, page_size=4)
    completions = tight.generate(bodies)
    assert tight.scheduler.stats.num_retractions > 0, "the pool should have forced retraction"
    assert [c.token_ids for c in completions] == expected


def test_different_seeds_give_different_outputs(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    [prompt] = draw_prompts(engine.info.vocab_size, [12])
    bodies = [SAMPLED | {"input_ids": prompt, "seed": seed} for seed in range(4)]
    outputs = {tuple(c.token_ids) for c in engine.generate(bodies)}
    assert len(outputs) == len(bodies)


def test_unseeded_requests_draw_their_own_seeds(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    [prompt] = draw_prompts(engine.info.vocab_size, [12])
    first, second = engine.generate([SAMPLED | {"input_ids": prompt}] * 2)
    assert first.token_ids != second.token_ids


@pytest.mark.parametrize("temperature", [1e-6, 1e-45, 1e-300])
def test_a_tiny_temperature_decodes_greedily(temperature, tiny_models, make_engine):
    """The limit of temperature -> 0 is the argmax, not the overflow of logits / temperature."""
    engine = make_engine(tiny_models["llama"])
    body = {"text": "The quick brown fox", "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    greedy, tiny = engine.generate([body | {"temperature": 0},
                                    body | {"temperature": temperature, "seed": 1}])
    assert tiny.token_ids == greedy.token_ids


def test_a_top_k_beyond_the_vocabulary_means_no_limit(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    body = {"text": "The quick brown fox", "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True,
            "temperature": 1.0, "seed": 5}
    unlimited, huge = engine.generate([body | {"top_k": -1}, body | {"top_k": 2**31 - 1}])
    assert huge.token_ids == unlimited.token_ids
    with pytest.raises(InvalidRequestError) as error:
        engine.submit("too-wide", body | {"top_k": 10**30})  # beyond what the wire carries
    assert error.value.field == "top_k"


# ---- penalties -------------------------------------------------------------------------------

# Greedy decoding of this prompt falls into loops on the tiny llama: a fair test of penalties.
LOOPING = {"text": "The quick brown fox", "max_new_tokens": 48, "temperature": 0,
           "ignore_eos": True}


def num_repeats(token_ids: list[int]) -> int:
    """Output tokens that already appeared earlier in the output."""
    return len(token_ids) - len(set(token_ids))


@pytest.mark.parametrize("penalty", [{"repetition_penalty": 2.0}, {"frequency_penalty": 2.0},
                                     {"presence_penalty": 2.0}], ids=lambda p: next(iter(p)))
def test_penalties_cut_repetition(penalty, tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    [alone] = engine.generate([LOOPING])
    plain, penalized = engine.generate([LOOPING, LOOPING | penalty])
    assert plain.token_ids == alone.token_ids, "a penalized neighbour changed a greedy row"
    assert num_repeats(plain.token_ids) >= 10, "the baseline should loop"
    assert num_repeats(penalized.token_ids) <= num_repeats(plain.token_ids) // 2
