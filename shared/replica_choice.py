"""Which replica serves a request: the one holding most of its prompt, unless that would pile
work onto a busy replica. Used by the front door over DP replicas (and, later, by the router
over nodes); what a replica holds comes from a `PrefixOracle`.

The rule, in SGLang's router's spirit (its `cache_aware` policy), written here:
1. If the replicas' loads are far apart (the busiest has more than `balance_abs` requests over
   the idlest and more than `balance_rel` times its load), send to the least loaded: a
   prefix hit does not pay for a queue.
2. Else, if some replica holds at least `cache_threshold` of the prompt, send it to the one
   holding the most (the least loaded among equals).
3. Else, send to the least loaded; among equals, to the one holding more of the prompt, then
   to the one holding least in all (the most room to cache; sequential traffic spreads).
Every choice is recorded in the oracle, so a conversation's next turn follows its history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from radixmesh.shared.prefix_oracle import PrefixOracle


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
    replica: int
    matched_tokens: int  # of the prompt, believed held by the chosen replica
    reason: str          # "cache", "load" or "balance": for logs and metrics


def choose_replica(token_ids: Sequence[int], loads: Mapping[int, int], oracle: PrefixOracle,
                   rule: ChoiceRule = DEFAULT_RULE) -> Choice:
    """The replica for a prompt among those that may take it (`loads`: replica -> requests it
    holds), recorded in `oracle`."""
    if not loads:
        raise ValueError("no replica to choose from")
    matched = oracle.matched(token_ids)
    held = {replica: matched.get(replica, 0) for replica in loads}
    least_loaded = min(loads, key=lambda r: (loads[r], -held[r], oracle.held_tokens(r), r))
    if rule.imbalanced(list(loads.values())):
        choice = Choice(least_loaded, held[least_loaded], "balance")
    else:
        best = max(loads, key=lambda r: (held[r], -loads[r], -r))
        if token_ids and held[best] >= rule.cache_threshold * len(token_ids):
            choice = Choice(best, held[best], "cache")
        else:
            choice = Choice(least_loaded, held[least_loaded], "load")
    oracle.record(choice.replica, token_ids)
    return choice
