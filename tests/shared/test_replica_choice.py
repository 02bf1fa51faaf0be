"""A prompt goes to the replica holding most of it, unless loads are far apart; each choice is
remembered, so a conversation's next turn follows its history."""

from __future__ import annotations

import pytest

from radixmesh.shared.prefix_oracle import SentPrefixes
from radixmesh.shared.replica_choice import ChoiceRule, choose_replica

HISTORY = list(range(100, 140))


def test_a_follow_up_lands_where_its_history_went() -> None:
    oracle = SentPrefixes(2)
    first = choose_replica(HISTORY, {0: 0, 1: 0}, oracle)
    assert first.reason == "load"
    # The other replica is idler now, but holds nothing of this conversation.
    follow_up = choose_replica(HISTORY + [7, 8, 9],
                               {first.replica: 3, 1 - first.replica: 0}, oracle)
    assert (follow_up.replica, follow_up.reason) == (first.replica, "cache")
    assert follow_up.matched_tokens == len(HISTORY)


def test_far_apart_loads_win_over_a_cache_hit() -> None:
    oracle = SentPrefixes(2)
    oracle.record(0, HISTORY)
    choice = choose_replica(HISTORY + [1], {0: 100, 1: 2}, oracle, ChoiceRule(balance_abs=32))
    assert (choice.replica, choice.reason) == (1, "balance")


def test_a_small_hit_does_not_beat_an_idle_replica() -> None:
    oracle = SentPrefixes(2)
    oracle.record(0, HISTORY[:10])
    choice = choose_replica(HISTORY, {0: 5, 1: 0}, oracle, ChoiceRule(cache_threshold=0.5))
    assert (choice.replica, choice.reason) == (1, "load")


def test_no_replica_is_an_error() -> None:
    with pytest.raises(ValueError, match="no replica"):
        choose_replica([1], {}, SentPrefixes(0))


def test_only_the_replicas_offered_are_chosen() -> None:
    oracle = SentPrefixes(3)
    oracle.record(1, HISTORY)
    # Replica 1 holds the whole history but is down (not offered): the others share the load.
    choice = choose_replica(HISTORY, {0: 4, 2: 1}, oracle)
    assert (choice.replica, choice.reason) == (2, "load")
