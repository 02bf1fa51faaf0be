"""Writes a JSONL of requests for `radixmesh offline` with the `sharegpt-like` length recipe of
design §8 (seed 1), scaled down with --num-prompts for CPU runs.

    python load-tests/offline_input.py --num-prompts 64 --out /tmp/sharegpt64.jsonl
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def lognormal_lengths(rng: np.random.Generator, count: int, mean: float, low: int,
                      high: int) -> np.ndarray:
    # mu = ln(mean) - sigma^2 / 2 makes the distribution's mean equal `mean` (sigma = 1).
    draws = rng.lognormal(mean=math.log(mean) - 0.5, sigma=1.0, size=count)
    return np.clip(np.rint(draws), low, high).astype(int)


def sharegpt_like(num_prompts: int, vocab_size: int, scale: float) -> list[dict]:
    rng = np.random.default_rng(1)
    input_lens = lognormal_lengths(rng, 1000, 226, 4, 2048)[:num_prompts]
    output_lens = lognormal_lengths(rng, 1000, 188, 4, 1024)[:num_prompts]
    requests = []
    for n_in, n_out in zip(input_lens, output_lens, strict=True):
        n_in, n_out = max(4, int(n_in * scale)), max(4, int(n_out * scale))
        ids = rng.integers(5, vocab_size, size=n_in).tolist()
        requests.append({"input_ids": ids, "max_new_tokens": n_out, "ignore_eos": True,
                         "temperature": 0})
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every length (a CPU run of the same shape, smaller)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w") as out:
        for request in sharegpt_like(args.num_prompts, args.vocab_size, args.scale):
            out.write(json.dumps(request) + "\n")


if __name__ == "__main__":
    main()
