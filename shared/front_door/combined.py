"""What a core over several meshes (the data-parallel `ReplicaSet`, the router's `NodeSet`)
reports for all of them together."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.mesh_info import CacheFlush, SchedulerLoad


def combined_load(loads: Sequence[SchedulerLoad], none_left: str) -> SchedulerLoad:
    """The loads added up, usage averaged and the hit rate from the sums; UnavailableError
    (`none_left`) when there are none."""
    if not loads:
        raise UnavailableError(none_left)
    total = SchedulerLoad(**{field.name: sum(getattr(load, field.name) for load in loads)
                             for field in dataclasses.fields(SchedulerLoad)})
    return dataclasses.replace(
        total, token_usage=total.token_usage / len(loads),
        cache_hit_rate=(total.num_cached_tokens / total.num_prompt_tokens
                        if total.num_prompt_tokens else 0.0))


def combined_flush(outcomes: Sequence[CacheFlush]) -> CacheFlush:
    """Flushed when every mesh flushed (the pages freed added up); else the first refusal."""
    refused = [outcome for outcome in outcomes if not outcome.flushed]
    if refused:
        return refused[0]
    return CacheFlush(True, "", sum(outcome.freed_pages for outcome in outcomes))
