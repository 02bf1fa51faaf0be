"""The node-choice policies and the approximate oracle, without processes: cache_aware keeps
a history where it is held and gives way past the balance thresholds; the others spread by
their own rule; the registry names every policy; a forgotten node holds nothing."""

from __future__ import annotations

from collections import Counter

import pytest

from radixmesh.shared.prefix_oracle import SentPrefixes
from radixmesh.shared.registry import UnknownNameError
from radixmesh.shared.replica_choice import (
    POLICIES,
    ChoiceRule,
    choose_replica,
    make_policy,
)

PROMPT = list(range(100, 164))
NODES = ("a", "b", "c")


def test_the_registry_names_the_gateway_policies() -> None:
    assert POLICIES.names() == ["cache_aware", "power_of_two", "random", "round_robin"]
    with pytest.raises(UnknownNameError, match="available: cache_aware"):
        make_policy("least_busy")


def test_cache_aware_follows_the_history_by_node_name() -> None:
    oracle = SentPrefixes(NODES)
    first = choose_replica(PROMPT, dict.fromkeys(NODES, 0), oracle)
    follow_up = choose_replica(PROMPT + [7, 8], {"a": 1, "b": 0, "c": 0}, oracle)
    assert (first.replica, first.reason) == ("a", "load")
    assert (follow_up.replica, follow_up.reason, follow_up.matched_tokens) == ("a", "cache", 64)


def test_cache_aware_gives_way_past_the_balance_thresholds() -> None:
    oracle = SentPrefixes(NODES)
    oracle.record("a", PROMPT)
    rule = ChoiceRule(balance_abs=2, balance_rel=1.5)
    held = choose_replica(PROMPT, {"a": 2, "b": 0, "c": 1}, oracle, rule)
    moved = choose_replica(PROMPT, {"a": 3, "b": 0, "c": 1}, oracle, rule)
    assert (held.replica, held.reason) == ("a", "cache")
    assert (moved.replica, moved.reason, moved.matched_tokens) == ("b", "balance", 0)


def test_round_robin_random_and_power_of_two_spread_without_prefixes() -> None:
    oracle = SentPrefixes(NODES)
    loads = dict.fromkeys(NODES, 0)
    round_robin, random_choice = make_policy("round_robin"), make_policy("random")
    turns = [choose_replica(PROMPT, loads, oracle, policy=round_robin).replica
             for _ in range(6)]
    assert turns == ["a", "b", "c", "a", "b", "c"]
    draws = Counter(choose_replica(PROMPT, loads, oracle, policy=random_choice).replica
                    for _ in range(300))
    assert set(draws) == set(NODES) and min(draws.values()) > 50
    two = make_policy("power_of_two")
    picks = Counter(two.choose(PROMPT, {"a": 9, "b": 0, "c": 9}, {}, oracle.held_tokens).reason
                    for _ in range(20))
    assert picks == {"power_of_two": 20}
    # The busy pair never wins over the idle node when the idle one is drawn.
    chosen = {two.choose(PROMPT, {"a": 9, "b": 0}, {}, oracle.held_tokens).replica
              for _ in range(20)}
    assert chosen == {"b"}


def test_a_forgotten_node_holds_nothing_and_others_keep_theirs() -> None:
    oracle = SentPrefixes(())
    oracle.record("a", PROMPT)
    oracle.record("b", PROMPT[:32])
    oracle.forget("a")
    assert oracle.matched(PROMPT) == {"a": 0, "b": 32}
    assert (oracle.held_tokens("a"), oracle.held_tokens("b")) == (0, 32)
    oracle.record("a", PROMPT[:8])  # it comes back and is sent work again
    assert oracle.matched(PROMPT) == {"a": 8, "b": 32}
