"""The standard workloads of design §8, built deterministically from one seeded generator.

Every workload draws from `numpy.random.default_rng(seed)` (seed 1 by default) in a fixed
order: lengths first (for `sharegpt-like` exactly as §8 writes it: 1000 input lengths, then
1000 output lengths), then the token ids request by request, then the shuffle or the arrival
gaps. So the same options always give the same requests, and the request rate never changes
the token ids. `scale` multiplies every length after the recipe, for CPU runs of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

# The made models keep their special tokens (pad, bos, eos, chat markers) at ids 0-4: random
# prompts stay clear of them so that no prompt is cut short or templated by accident.
FIRST_TOKEN_ID = 5

SHAREGPT_POOL = 1000
SHAREGPT_INPUT = (226, 4, 2048)   # lognormal mean, then the clip range
SHAREGPT_OUTPUT = (188, 4, 1024)
LOGNORMAL_SIGMA = 1.0
ONLINE_PROMPTS, ONLINE_RATE = 500, 8.0
DECODE_B1 = (128, 512)            # input, output tokens
SHARED_PREFIX_GROUPS, SHARED_PREFIX_GROUP_SIZE = 64, 16
SHARED_PREFIX_LENGTHS = (2048, 128, 256)  # system prompt, question, output
NULL_WORKER_PROMPTS, NULL_WORKER_LENGTHS = 1000, (16, 256)
WARMUP_NEW_TOKENS = 16
# Warm-up prompts come from their own generator, so they share no prefix with the timed ones.
WARMUP_SEED_OFFSET = 1_000_003


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request of a workload; `arrival_s` is when it is sent, from the benchmark's start."""

    input_ids: tuple[int, ...]
    max_new_tokens: int
    arrival_s: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    """What the command line may change; `None` means the workload's own value."""

    vocab_size: int
    num_prompts: int | None = None
    request_rate: float | None = None  # requests per second; math.inf sends all at once
    scale: float = 1.0
    seed: int = 1

    def __post_init__(self) -> None:
        if self.vocab_size <= FIRST_TOKEN_ID:
            raise ValueError(f"--vocab-size must be > {FIRST_TOKEN_ID}, got {self.vocab_size}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError("--num-prompts must be >= 1")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError("--request-rate must be > 0 (inf sends all at once)")
        if not self.scale > 0:
            raise ValueError("--scale must be > 0")


@dataclass(frozen=True)
class Workload:
    name: str
    requests: list[BenchRequest]
    request_rate: float  # the rate the arrivals were drawn at; math.inf: all at once


def lognormal_lengths(rng: np.random.Generator, count: int, mean: float, low: int,
                      high: int) -> np.ndarray:
    """`count` lengths with the given mean before rounding and clipping to [low, high]."""
    # mu = ln(mean) - sigma^2 / 2 is what makes the lognormal's mean equal `mean`.
    mu = math.log(mean) - LOGNORMAL_SIGMA**2 / 2
    draws = rng.lognormal(mean=mu, sigma=LOGNORMAL_SIGMA, size=count)
    return np.clip(np.rint(draws), low, high).astype(np.int64)


def sharegpt_lengths(rng: np.random.Generator, count: int) -> tuple[list[int], list[int]]:
    """The first `count` (input, output) lengths of the §8 recipe.

    The whole pool of 1000 inputs is drawn before the outputs whatever `count` is, so a
    smaller run takes a prefix of the full workload's lengths rather than different ones.
    """
    pool = max(count, SHAREGPT_POOL)
    inputs = lognormal_lengths(rng, pool, *SHAREGPT_INPUT)
    outputs = lognormal_lengths(rng, pool, *SHAREGPT_OUTPUT)
    return inputs[:count].tolist(), outputs[:count].tolist()


def scaled(length: int, scale: float) -> int:
    return max(1, round(length * scale))


def random_ids(rng: np.random.Generator, count: int, vocab_size: int) -> tuple[int, ...]:
    return tuple(rng.integers(FIRST_TOKEN_ID, vocab_size, size=count).tolist())


def arrival_times(rng: np.random.Generator, count: int, rate: float) -> list[float]:
    """Poisson arrivals: the first request at 0, then exponential gaps of mean 1 / rate."""
    if math.isinf(rate):
        return [0.0] * count
    gaps = rng.exponential(1.0 / rate, size=count - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


Prompts = list[tuple[tuple[int, ...], int]]  # (input ids, max new tokens) in sending order


def _sharegpt_prompts(rng: np.random.Generator, count: int, options: WorkloadOptions) -> Prompts:
    inputs, outputs = sharegpt_lengths(rng, count)
    return [(random_ids(rng, scaled(n_in, options.scale), options.vocab_size),
             scaled(n_out, options.scale)) for n_in, n_out in zip(inputs, outputs, strict=True)]


def _fixed_prompts(rng: np.random.Generator, count: int, options: WorkloadOptions,
                   lengths: tuple[int, int]) -> Prompts:
    n_in, n_out = (scaled(length, options.scale) for length in lengths)
    return [(random_ids(rng, n_in, options.vocab_size), n_out) for _ in range(count)]


def _shared_prefix_prompts(rng: np.random.Generator, count: int,
                           options: WorkloadOptions) -> Prompts:
    """Groups of 16 prompts behind one system prompt each, shuffled; the first `count` kept.

    A smaller `count` keeps the group size and uses fewer groups, so the share of prompt
    tokens a prefix cache can reuse stays the same.
    """
    system_len, question_len, output_len = (scaled(n, options.scale)
                                            for n in SHARED_PREFIX_LENGTHS)
    num_groups = math.ceil(count / SHARED_PREFIX_GROUP_SIZE)
    systems = [random_ids(rng, system_len, options.vocab_size) for _ in range(num_groups)]
    prompts = [(system + random_ids(rng, question_len, options.vocab_size), output_len)
               for system in systems for _ in range(SHARED_PREFIX_GROUP_SIZE)]
    order = rng.permutation(len(prompts))
    return [prompts[index] for index in order[:count]]


# name -> (default number of prompts, default request rate, prompt builder)
_RECIPES: dict[str, tuple[int, float, Callable[..., Prompts]]] = {
    "sharegpt-like": (SHAREGPT_POOL, math.inf, _sharegpt_prompts),
    "decode-b1": (1, math.inf, partial(_fixed_prompts, lengths=DECODE_B1)),
    "online": (ONLINE_PROMPTS, ONLINE_RATE, _sharegpt_prompts),
    "shared-prefix": (SHARED_PREFIX_GROUPS * SHARED_PREFIX_GROUP_SIZE, math.inf,
                      _shared_prefix_prompts),
    "null-worker": (NULL_WORKER_PROMPTS, math.inf,
                    partial(_fixed_prompts, lengths=NULL_WORKER_LENGTHS)),
}
WORKLOADS: tuple[str, ...] = tuple(_RECIPES)


def build_workload(name: str, options: WorkloadOptions) -> Workload:
    """The requests of workload `name`; the same `options` always give the same requests."""
    if name not in _RECIPES:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    default_count, default_rate, build_prompts = _RECIPES[name]
    count = options.num_prompts or default_count
    rate = options.request_rate if options.request_rate is not None else default_rate
    rng = np.random.default_rng(options.seed)
    prompts = build_prompts(rng, count, options)
    arrivals = arrival_times(rng, count, rate)
    requests = [BenchRequest(ids, max_new_tokens, arrival)
                for (ids, max_new_tokens), arrival in zip(prompts, arrivals, strict=True)]
    return Workload(name, requests, rate)


def warmup_workload(workload: Workload, count: int, vocab_size: int, seed: int) -> Workload:
    """`count` requests sent before the timed ones and left out of every figure (SGLang's and
    vLLM's benchmarks do the same): a first request's one-time costs (lazy kernel choice,
    connection set-up) are not the workload's. Each is as long as the workload's first prompt,
    with other ids, so that nothing it leaves in the prefix cache can serve a timed request."""
    rng = np.random.default_rng(seed + WARMUP_SEED_OFFSET)
    length = len(workload.requests[0].input_ids)
    requests = [BenchRequest(random_ids(rng, length, vocab_size), WARMUP_NEW_TOKENS)
                for _ in range(count)]
    return Workload(f"{workload.name} warm-up", requests, math.inf)


def request_body(request: BenchRequest, sampling: dict) -> dict:
    """The request as both paths send it: the prompt's ids, its length cap, the sampling."""
    return {"input_ids": list(request.input_ids), "max_new_tokens": request.max_new_tokens,
            **sampling}
