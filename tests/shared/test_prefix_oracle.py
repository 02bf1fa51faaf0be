"""SentPrefixes remembers which replica was sent which prompt, as whole shared prefixes, and
forgets a replica's least recently sent prefixes first once it holds too many tokens."""

from __future__ import annotations

import random

from radixmesh.shared.prefix_oracle import SentPrefixes


def test_each_replica_matches_what_it_was_sent() -> None:
    oracle = SentPrefixes(3)
    oracle.record(0, [1, 2, 3, 4, 5])
    oracle.record(1, [1, 2, 9, 9])
    assert oracle.matched([1, 2, 3, 4, 5, 6]) == {0: 5, 1: 2, 2: 0}
    assert oracle.matched([1, 2, 9]) == {0: 2, 1: 3, 2: 0}
    assert oracle.matched([7]) == {0: 0, 1: 0, 2: 0}
    assert oracle.matched([]) == {0: 0, 1: 0, 2: 0}
    oracle.record(2, [1, 2, 3])  # a prefix of an edge splits it
    assert oracle.matched([1, 2, 3, 4]) == {0: 4, 1: 2, 2: 3}
    assert [oracle.held_tokens(r) for r in range(3)] == [5, 4, 3]


def test_matches_agree_with_a_brute_force_reference() -> None:
    rng = random.Random(0)
    oracle = SentPrefixes(2)
    sent: dict[int, list[list[int]]] = {0: [], 1: []}
    for _ in range(300):
        prompt = [rng.randrange(3) for _ in range(rng.randrange(1, 9))]
        replica = rng.randrange(2)
        oracle.record(replica, prompt)
        sent[replica].append(prompt)
        probe = [rng.randrange(3) for _ in range(rng.randrange(0, 9))]
        assert oracle.matched(probe) == {r: max((_common(p, probe) for p in sent[r]),
                                                default=0) for r in (0, 1)}


def test_the_least_recently_sent_prefix_is_forgotten_first() -> None:
    oracle = SentPrefixes(1, max_tokens_per_replica=8)
    oracle.record(0, [1, 1, 1, 1])
    oracle.record(0, [2, 2, 2, 2])
    oracle.record(0, [1, 1, 1, 1])  # used again: now newer than the 2s
    oracle.record(0, [3, 3, 3])     # 11 tokens: the 2s go
    assert oracle.matched([2, 2, 2, 2]) == {0: 0}
    assert oracle.matched([1, 1, 1, 1]) == {0: 4}
    assert oracle.matched([3, 3, 3]) == {0: 3}
    assert oracle.held_tokens(0) == 7


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
