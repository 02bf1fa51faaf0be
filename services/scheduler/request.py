"""The scheduler's view of one request: token ids, pages and progress. State only, no logic
beyond what follows from the fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from radixmesh.services.scheduler.stop_conditions import StopRule
from radixmesh.shared.requests import FinishReason
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.trace_context import NO_TRACE, TraceContext


class Prefetch(Enum):
    """Where a request stands with its prefetch from L3 (the hierarchical cache)."""

    LOOKING = "looking"    # asked L3 how much of the prompt it holds
    FETCHING = "fetching"  # L3 pages on their way into host slots
    DONE = "done"          # nothing (more) to wait for


@dataclass(frozen=True, slots=True)
class CachedTiers:
    """Prompt tokens a request found cached at its first admission, by where they were."""

    device: int = 0
    host: int = 0
    storage: int = 0  # brought from L3 into host memory by a prefetch, then loaded
    remote: int = 0   # fetched from another node into host memory, then loaded

    @property
    def total(self) -> int:
        return self.device + self.host + self.storage + self.remote


class ReqStatus(Enum):
    WAITING = "waiting"    # queued, or retracted and queued again
    RUNNING = "running"    # holds pages and is known to the worker
    FINISHED = "finished"


@dataclass(eq=False)
class SchedReq:
    """Page layout: `page_ids[:num_tree_pages]` belong to the prefix cache and are protected by
    the lock held through `cache_handle`; the rest belong to this request alone.

    `kv_len` counts tokens whose KV is computed or planned; the last known token has no KV yet
    while the request decodes, so a decoding request has `kv_len == seq_len - 1`.
    """

    rid: str
    input_ids: tuple[int, ...]
    sampling: SamplingParams
    arrival: int
    output_ids: list[int] = field(default_factory=list)
    status: ReqStatus = ReqStatus.WAITING
    page_ids: list[int] = field(default_factory=list)
    num_tree_pages: int = 0
    cache_handle: object | None = None
    kv_len: int = 0
    num_cached_prompt_tokens: int = 0  # reported in usage: prompt tokens served from the cache
    prefill_done: bool = False  # the chunk that ends at the last known token has been planned
    admitted_once: bool = False
    finish: FinishReason | None = None
    trace: TraceContext = NO_TRACE  # carried to the worker, for its step spans
    prefetch: Prefetch | None = None  # None: not looked at by the hierarchical cache yet
    cached_tiers: CachedTiers = CachedTiers()  # set by each admission's prefix match
    cache_salt: str | None = None  # the prefix-cache namespace: pages shared only within it
    stop_rule: StopRule | None = None  # set by the scheduler that takes the request

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def all_ids(self) -> tuple[int, ...]:
        return self.input_ids + tuple(self.output_ids)

    @property
    def remaining_new_tokens(self) -> int:
        return self.sampling.max_new_tokens - len(self.output_ids)

    @property
    def owned_pages(self) -> list[int]:
        return self.page_ids[self.num_tree_pages:]
