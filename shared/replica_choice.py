"""Which replica serves a request: the one holding most of its prompt, unless that would pile
work onto a busy replica. Used by the front door over DP replicas (and, later, by the router
over nodes); what a replica holds comes from a `PrefixOracle`.

The rule, in SGLang's router's spirit (its `cache_aware` policy), written here:
1. If the replicas' loads are far apart (the busiest has more than `balance_abs` requests over
   the idlest and more than `balance_rel` times its load), send to the least loaded: a
   prefix hit does not pay for a queue.
2. Else, if some replica holds at least `cache_threshold` of the prompt, send it to the one
   holding the most (the least loaded among equals).
3. Else, send to the least loaded, ties to the replica holding more of the prompt.
Every choice is recorded in the oracle, so a conversation's next turn follows its history.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class Choice:
    replica: int
    matched_tokens: int  # of the prompt, believed held by the chosen replica
    reason: str          # "cache", "load" or "balance": for logs and metrics


def choose_replica(token_ids: Sequence[int], loads: Sequence[int], oracle: PrefixOracle,
                   rule: ChoiceRule = ChoiceRule()) -> Choice:
    """The replica for a prompt, given each replica's load (requests it holds), recorded in
    `oracle`. Replicas are 0..len(loads)-1."""
    if not loads:
        raise ValueError("no replica to choose from")
    matched = oracle.matched(token_ids)
    least_loaded = min(range(len(loads)), key=lambda r: (loads[r], matched.get(r, 0) * -1, r))
    if rule.imbalanced(loads):
        choice = Choice(least_loaded, matched.get(least_loaded, 0), "balance")
    else:
        best = max(range(len(loads)), key=lambda r: (matched.get(r, 0), -loads[r], -r))
        if token_ids and matched.get(best, 0) >= rule.cache_threshold * len(token_ids):
            choice = Choice(best, matched[best], "cache")
        else:
            choice = Choice(least_loaded, matched.get(least_loaded, 0), "load")
    oracle.record(choice.replica, token_ids)
    return choice
