"""The batched sampler: masks, greedy rows, seeded determinism and the drawn distribution."""

from __future__ import annotations

import math

import pytest
import torch

from radixmesh.services.worker.sampling import Sampler, SamplingBatch, filter_probs
from radixmesh.services.worker.sampling.random import (
    MASK32,
    exponential_noise,
    fmix32_,
    hash_uniforms,
    row_keys,
    token_keys,
)
from radixmesh.shared.sampling_params import SamplingParams as P

# Upper 0.01% points of the chi-square distribution, by degrees of freedom.
CHI2_CRITICAL = {3: 21.11, 5: 25.74, 7: 29.88, 15: 44.26}


def _filter(probs: list[list[float]], top_k: int = -1, top_p: float = 1.0,
            min_p: float = 0.0) -> list[list[float]]:
    rows = len(probs)
    batch = SamplingBatch.build([P(top_k=top_k, top_p=top_p, min_p=min_p)] * rows,
                                [0] * rows, [0] * rows, list(range(rows)), "cpu")
    return filter_probs(torch.tensor(probs), batch).tolist()


def _draw(sampler: Sampler, logits: torch.Tensor, params: list[P], seeds: list[int],
          positions: list[int], slots: list[int] | None = None) -> torch.Tensor:
    slots = slots if slots is not None else list(range(len(params)))
    return sampler.sample(logits, SamplingBatch.build(params, seeds, positions, slots, "cpu"))


def _chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    observed = torch.bincount(tokens, minlength=len(probs)).double()
    expected = probs.double() * len(tokens)
    kept = expected > 0
    assert observed[~kept].sum() == 0, "a token of probability 0 was drawn"
    return float(((observed[kept] - expected[kept]) ** 2 / expected[kept]).sum())


DYADIC = [0.5, 0.25, 0.125, 0.0625, 0.0625]


def test_top_k_keeps_the_k_largest_and_their_ties() -> None:
    assert _filter([DYADIC], top_k=2) == [[0.5, 0.25, 0, 0, 0]]
    assert _filter([DYADIC], top_k=4) == [DYADIC]  # the 4th is tied with the 5th
    ties = [[0.125, 0.25, 0.25, 0.25]]
    assert _filter(ties, top_k=2) == [[0, *ties[0][1:]]]
    assert _filter([DYADIC], top_k=-1) == [DYADIC]
    assert _filter([DYADIC], top_k=0) == [DYADIC]
    assert _filter([DYADIC], top_k=99) == [DYADIC]


def test_top_p_keeps_the_shortest_prefix_reaching_p() -> None:
    assert _filter([DYADIC], top_p=0.75) == [[0.5, 0.25, 0, 0, 0]]  # reaches p exactly
    assert _filter([DYADIC], top_p=0.6) == [[0.5, 0.25, 0, 0, 0]]
    assert _filter([DYADIC], top_p=0.5) == [[0.5, 0, 0, 0, 0]]
    assert _filter([DYADIC], top_p=1e-6) == [[0.5, 0, 0, 0, 0]]  # always the top token
    assert _filter([DYADIC], top_p=0.9) == [DYADIC]  # the 4th reaches 0.9, its tie stays
    assert _filter([[0.25, 0.25, 0.25, 0.25]], top_p=0.1) == [[0.25] * 4]


def test_top_p_is_measured_on_the_top_k_mass() -> None:
    # Top-3 mass is 0.875; 0.8 of it is 0.7, reached by the first two tokens.
    assert _filter([DYADIC], top_k=3, top_p=0.8) == [[0.5, 0.25, 0, 0, 0]]
    assert _filter([DYADIC], top_k=4, top_p=1.0) == [DYADIC]


def test_min_p_drops_tokens_below_a_fraction_of_the_max() -> None:
    assert _filter([DYADIC], min_p=0.5) == [[0.5, 0.25, 0, 0, 0]]  # equal to the floor stays
    assert _filter([DYADIC], min_p=0.51) == [[0.5, 0, 0, 0, 0]]
    assert _filter([DYADIC], min_p=1.0) == [[0.5, 0, 0, 0, 0]]
    assert _filter([[0.375, 0.375, 0.25]], min_p=1.0) == [[0.375, 0.375, 0]]
    assert _filter([DYADIC], top_k=4, min_p=0.2) == [[0.5, 0.25, 0.125, 0, 0]]


def test_filter_rows_are_independent_of_each_other() -> None:
    params = [P(top_k=2), P(top_p=0.5), P(min_p=0.3), P(), P(temperature=0)]
    batch = SamplingBatch.build(params, [0] * 5, [0] * 5, list(range(5)), "cpu")
    probs = torch.tensor([DYADIC] * 5)
    filtered = filter_probs(probs, batch).tolist()
    assert filtered[:2] == _filter([DYADIC], top_k=2) + _filter([DYADIC], top_p=0.5)
    assert filtered[2] == _filter([DYADIC], min_p=0.3)[0]
    assert filtered[3] == filtered[4] == DYADIC


def test_greedy_rows_take_the_argmax() -> None:
    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(0))
    sampler = Sampler(300, 8, "cpu")
    mixed = [P(temperature=0), P(), P(top_k=1, temperature=5.0), P(top_p=0.3),
             P(temperature=0, top_p=0.1), P(min_p=0.5)]
    tokens = _draw(sampler, logits, mixed, list(range(6)), [3] * 6)
    argmax = logits.argmax(dim=-1)
    assert [tokens[i] for i in (0, 2, 4)] == [argmax[i] for i in (0, 2, 4)]
    all_greedy = _draw(sampler, logits, [P(temperature=0)] * 6, [7] * 6, [0] * 6)
    assert torch.equal(all_greedy, argmax)


def test_a_seeded_request_draws_the_same_alone_and_in_any_batch() -> None:
    gen = torch.Generator().manual_seed(1)
    target = P(temperature=1.3, top_p=0.9)
    others = [P(), P(temperature=0), P(top_k=5), P(min_p=0.2, seed=3)]
    sampler = Sampler(500, 8, "cpu")
    for position in range(10):
        logits = torch.randn(5, 500, generator=gen)
        alone = _draw(sampler, logits[:1], [target], [42], [position])
        first = _draw(sampler, logits, [target, *others], [42, 1, 2, 3, 4], [position, 0, 5, 9, 1])
        reordered = torch.flip(logits, dims=[0])
        last = _draw(sampler, reordered, [*reversed(others), target], [4, 3, 2, 1, 42],
                     [1, 9, 5, 0, position])
        assert alone[0] == first[0] == last[4]


def test_different_seeds_draw_different_sequences() -> None:
    sampler = Sampler(1000, 8, "cpu")
    logits = torch.zeros(8 * 32, 1000)
    seeds = [seed for seed in range(1, 9) for _ in range(32)]
    positions = list(range(32)) * 8
    tokens = _draw(sampler, logits, [P()] * len(seeds), seeds, positions, [0] * len(seeds))
    sequences = {tuple(tokens[i * 32:(i + 1) * 32].tolist()) for i in range(8)}
    assert len(sequences) == 8


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_draws_follow_the_tempered_softmax(temperature: float) -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, 1.5, 0.2])
    draws = 6000
    sampler = Sampler(8, 1, "cpu")
    tokens = _draw(sampler, logits.expand(draws, 8), [P(temperature=temperature)] * draws,
                   [11] * draws, list(range(draws)), [0] * draws)
    assert _chi_square(tokens, torch.softmax(logits / temperature, dim=0)) < CHI2_CRITICAL[7]


def test_temperature_sharpens_and_flattens() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    draws = 4000
    sampler = Sampler(4, 1, "cpu")
    top_share = []
    for temperature in (0.25, 1.0, 4.0):
        tokens = _draw(sampler, logits.expand(draws, 4), [P(temperature=temperature)] * draws,
                       [5] * draws, list(range(draws)), [0] * draws)
        top_share.append(float((tokens == 0).float().mean()))
    assert top_share[0] > 0.95 and top_share[0] > top_share[1] > top_share[2] > 0.25


def test_filtered_draws_follow_the_renormalized_distribution() -> None:
    probs = torch.tensor([0.3, 0.2, 0.15, 0.1, 0.1, 0.08, 0.04, 0.03])
    draws = 6000
    params = P(top_k=6, top_p=0.9, min_p=0.2)
    expected = torch.tensor(_filter([probs.tolist()], 6, 0.9, 0.2)[0])
    assert (expected > 0).sum() == 5
    sampler = Sampler(8, 1, "cpu")
    tokens = _draw(sampler, probs.log().expand(draws, 8), [params] * draws,
                   list(range(draws)), [0] * draws, [0] * draws)
    assert _chi_square(tokens, expected / expected.sum()) < CHI2_CRITICAL[5]


def test_fmix32_matches_a_pure_python_murmur3_finalizer() -> None:
    def reference(h: int) -> int:
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & MASK32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & MASK32
        return h ^ (h >> 16)

    values = [0, 1, 0xFFFF, 0x10000, 0xDEADBEEF, MASK32, 0x80000000, 123456789]
    assert fmix32_(torch.tensor(values)).tolist() == [reference(v) for v in values]


def test_hash_uniforms_are_open_unit_and_roughly_uniform() -> None:
    seeds = torch.tensor([0, 1, 2**63 - 1, 7] * 16)
    positions = torch.arange(64)
    uniforms = hash_uniforms(row_keys(seeds, positions), token_keys(4096, "cpu"))
    assert uniforms.dtype == torch.float32 and uniforms.shape == (64, 4096)
    assert uniforms.min() > 0 and uniforms.max() < 1
    assert abs(float(uniforms.mean()) - 0.5) < 0.002
    histogram = torch.histc(uniforms, bins=16, min=0.0, max=1.0).double()
    expected = uniforms.numel() / 16
    assert float(((histogram - expected) ** 2 / expected).sum()) < CHI2_CRITICAL[15]
    # Neighbouring positions and neighbouring seeds are uncorrelated.
    bound = 4 / math.sqrt(4096)
    assert abs(float(torch.corrcoef(uniforms[:2])[0, 1])) < bound
    assert abs(float(torch.corrcoef(uniforms[[0, 1]])[0, 1])) < bound
    same_seed = hash_uniforms(row_keys(torch.tensor([5, 5]), torch.tensor([0, 1])),
                              token_keys(4096, "cpu"))
    assert abs(float(torch.corrcoef(same_seed)[0, 1])) < bound


def test_noise_is_a_pure_function_of_seed_position_and_token() -> None:
    keys = token_keys(64, "cpu")
    batch = exponential_noise(torch.tensor([3, 9, 3]), torch.tensor([4, 4, 5]), keys)
    single = exponential_noise(torch.tensor([3]), torch.tensor([5]), keys)
    assert torch.equal(batch[2], single[0]) and not torch.equal(batch[0], batch[2])
    assert (batch > 0).all() and torch.isfinite(batch).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_draw_identically() -> None:
    seeds, positions = torch.tensor([0, 1, 2**62 + 5, 99]), torch.tensor([0, 7, 3, 100000])
    cpu_noise = exponential_noise(seeds, positions, token_keys(32000, "cpu"))
    cuda_noise = exponential_noise(seeds.cuda(), positions.cuda(), token_keys(32000, "cuda"))
    assert torch.equal(cpu_noise, cuda_noise.cpu())
    params = [P(), P(top_k=40, temperature=0.7), P(top_p=0.9), P(min_p=0.05)] * 16
    logits = torch.randn(64, 32000, generator=torch.Generator().manual_seed(3))
    on_cpu = _draw(Sampler(32000, 64, "cpu"), logits, params, list(range(64)), [2] * 64)
    batch = SamplingBatch.build(params, list(range(64)), [2] * 64, list(range(64)), "cuda")
    for compile_race in (False, True):
        sampler = Sampler(32000, 64, "cuda", compile_race=compile_race)
        assert torch.equal(on_cpu, sampler.sample(logits.cuda(), batch).cpu())
        for row in range(4):  # alone, each row draws what it drew inside the batch
            alone = SamplingBatch.build([params[row]], [row], [2], [0], "cuda")
            assert sampler.sample(logits[row:row + 1].cuda(), alone).item() == on_cpu[row]
