"""Which replica serves a request: a policy, chosen by name (`POLICIES`), over the replicas
that may take it, their loads and what a `PrefixOracle` believes each holds. Used by the front
door over DP replicas and by the router over nodes. The names and meanings are those of
SGLang's model gateway:

- `cache_aware` (the default), written here in its spirit:
  1. If the replicas' loads are far apart (the busiest has more than `balance_abs` requests
     over the idlest and more than `balance_rel` times its load), send to the least loaded: a
     prefix hit does not pay for a queue.
  2. Else, if some replica holds at least `cache_threshold` of the prompt, send it to the one
     holding the most (the least loaded among equals).
  3. Else, send to the least loaded; among equals, to the one holding least in all (the most
     room to cache). A match below the threshold counts as none here: every prompt of a chat
     template shares its first tokens (BOS, the template's opening), and letting such a match
     break the tie would pile idle sequential conversations onto one replica instead of
     spreading them (SGLang's gateway likewise sends a prompt below the threshold to the
     replica whose tree is smallest).
- `power_of_two`: two replicas drawn at random, the less loaded of them.
- `round_robin`: each replica in turn (by name order).
- `random`: any replica, uniformly.
Every choice is recorded in the oracle (by the caller of `choose`; `choose_replica` does it),
so a conversation's next turn follows its history under `cache_aware`.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from radixmesh.shared.prefix_oracle import PrefixOracle, Replica
from radixmesh.shared.registry import Registry


@dataclass(frozen=True)
class ChoiceRule:
    cache_threshold: float = 0.5   # share of the prompt a replica must hold to be preferred
    balance_abs: int = 32          # requests apart before load wins over cache...
    balance_rel: float = 1.5       # ...and this many times the idlest replica's load

    def imbalanced(self, loads: Sequence[int]) -> bool:
        busiest, idlest = max(loads), min(loads)
        return busiest - idlest > self.balance_abs and busiest > idlest * self.balance_rel


DEFAULT_RULE = ChoiceRule()


@dataclass(frozen=True)
class Choice:
    replica: Replica
    matched_tokens: int  # of the prompt, believed held by the chosen replica
    # "cache", "load" or "balance" (cache_aware), "power_of_two", "round_robin", "random":
    # for logs and metrics. The router says "balance_fetch" for a "balance" choice where
    # another node advertises more of the prompt in the page index (the chosen one fetches).
    reason: str


class ChoicePolicy(ABC):
    """Invariants: `choose` returns one of `loads`' replicas (never called with none), at once
    and without I/O. `uses_prefixes` False: `matched` is always empty (the caller need not ask
    an oracle)."""

    uses_prefixes = True

    @abstractmethod
    def choose(self, token_ids: Sequence[int], loads: Mapping[Replica, int],
               matched: Mapping[Replica, int], held_tokens: Callable[[Replica], int]) -> Choice:
        """`loads`: replica -> requests it holds now; `matched`: replica -> leading tokens of
        the prompt it is believed to hold; `held_tokens`: all it is believed to hold."""


POLICIES: Registry[Callable[[ChoiceRule], ChoicePolicy]] = Registry("routing policy")


@POLICIES.register("cache_aware")
class CacheAware(ChoicePolicy):
    def __init__(self, rule: ChoiceRule = DEFAULT_RULE) -> None:
        self.rule = rule

    def choose(self, token_ids: Sequence[int], loads: Mapping[Replica, int],
               matched: Mapping[Replica, int], held_tokens: Callable[[Replica], int]) -> Choice:
        held = {replica: matched.get(replica, 0) for replica in loads}
        least_loaded = min(loads, key=lambda r: (loads[r], held_tokens(r), r))
        if self.rule.imbalanced(list(loads.values())):
            return Choice(least_loaded, held[least_loaded], "balance")
        most = max(held.values())
        best = min((r for r in loads if held[r] == most), key=lambda r: (loads[r], r))
        if token_ids and most >= self.rule.cache_threshold * len(token_ids):
            return Choice(best, most, "cache")
        return Choice(least_loaded, held[least_loaded], "load")


@POLICIES.register("power_of_two")
class PowerOfTwo(ChoicePolicy):
    uses_prefixes = False

    def __init__(self, rule: ChoiceRule = DEFAULT_RULE, seed: int | None = None) -> None:
        self._draw = random.Random(seed)

    def choose(self, token_ids: Sequence[int], loads: Mapping[Replica, int],
               matched: Mapping[Replica, int], held_tokens: Callable[[Replica], int]) -> Choice:
        replicas = sorted(loads)
        pair = self._draw.sample(replicas, min(2, len(replicas)))
        return Choice(min(pair, key=lambda r: (loads[r], r)), 0, "power_of_two")


@POLICIES.register("round_robin")
class RoundRobin(ChoicePolicy):
    uses_prefixes = False

    def __init__(self, rule: ChoiceRule = DEFAULT_RULE) -> None:
        self._turn = itertools.count()

    def choose(self, token_ids: Sequence[int], loads: Mapping[Replica, int],
               matched: Mapping[Replica, int], held_tokens: Callable[[Replica], int]) -> Choice:
        replicas = sorted(loads)
        return Choice(replicas[next(self._turn) % len(replicas)], 0, "round_robin")


@POLICIES.register("random")
class RandomChoice(ChoicePolicy):
    uses_prefixes = False

    def __init__(self, rule: ChoiceRule = DEFAULT_RULE, seed: int | None = None) -> None:
        self._draw = random.Random(seed)

    def choose(self, token_ids: Sequence[int], loads: Mapping[Replica, int],
               matched: Mapping[Replica, int], held_tokens: Callable[[Replica], int]) -> Choice:
        return Choice(self._draw.choice(sorted(loads)), 0, "random")


def with_fetch(choice: Choice, fetchable: int) -> Choice:
    """`choice`, its reason "balance_fetch" where cache_aware passed over the holder of the
    prompt for load ("balance") and the page index advertises more of the prompt (`fetchable`
    leading tokens, on some node) than the chosen replica holds. The router tells the chosen
    node nothing more: its hicache looks the prompt up in the same index and fetches the
    pages from their holder where that beats recomputing them (issue 20: the scheduler's
    --hicache-remote-policy decides), so the reason records that the choice counted on it."""
    if choice.reason == "balance" and fetchable > choice.matched_tokens:
        return dataclasses.replace(choice, reason="balance_fetch")
    return choice


def make_policy(name: str, rule: ChoiceRule = DEFAULT_RULE) -> ChoicePolicy:
    """The policy registered as `name` (UnknownNameError listing the names otherwise)."""
    return POLICIES.get(name)(rule)


def choose_replica(token_ids: Sequence[int], loads: Mapping[Replica, int],
                   oracle: PrefixOracle, rule: ChoiceRule = DEFAULT_RULE,
                   policy: ChoicePolicy | None = None) -> Choice:
    """The replica for a prompt among those that may take it (`loads`: replica -> requests it
    holds), by `policy` (default: cache_aware with `rule`), recorded in `oracle`."""
    if not loads:
        raise ValueError("no replica to choose from")
    policy = policy or CacheAware(rule)
    matched = oracle.matched(token_ids) if policy.uses_prefixes else {}
    choice = policy.choose(token_ids, loads, matched, oracle.held_tokens)
    oracle.record(choice.replica, token_ids)
    return choice
