"""What a mesh tells its front doors: the model it serves and the scheduler's load."""

from __future__ import annotations

from dataclasses import dataclass

from radixmesh.shared.page_keys import KeyNamespace
from radixmesh.shared.step import WorkerInfo

UNKNOWN_WEIGHTS = "unknown"  # a worker that names no weights fingerprint (an older one)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """The model as clients see it: what a prompt must fit and which ids end generation."""

    model_id: str                  # the name clients use (the front door sets it)
    context_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    max_total_tokens: int          # KV pool size in tokens: prompt + output must fit
    page_size: int
    worker: str                    # which worker implementation serves ("model", "null")
    # How the node names its pages (no salt), for a router to compute the same page keys;
    # None when the worker holds no KV.
    key_namespace: KeyNamespace | None = None

    @classmethod
    def from_worker(cls, info: WorkerInfo) -> ModelInfo:
        return cls(model_id=info.model_id, context_len=info.context_len,
                   vocab_size=info.vocab_size, eos_token_ids=info.eos_token_ids,
                   max_total_tokens=info.max_total_tokens, page_size=info.page_size,
                   worker=info.worker, key_namespace=worker_key_namespace(info))


def worker_key_namespace(info: WorkerInfo) -> KeyNamespace | None:
    """The unsalted namespace of the worker's page keys (design §4), None for a worker that
    holds no KV. It must equal the one the scheduler's hierarchical cache chains its keys from
    (`services/scheduler/host_cache.py`), or a router's keys would never match a node's:
    tests/router/test_key_namespace.py holds the two together."""
    if info.kv_dtype == "none":
        return None
    return KeyNamespace(model_id=info.model_id,
                        weights_fingerprint=info.weights_fingerprint or UNKNOWN_WEIGHTS,
                        kv_dtype=info.kv_dtype, page_size=info.page_size,
                        tp_layout=f"tp{info.tp_size}")


@dataclass(frozen=True, slots=True)
class SchedulerLoad:
    """The scheduler's gauges and counters, as the front door exports them."""

    num_running_reqs: int = 0
    num_queue_reqs: int = 0
    token_usage: float = 0.0
    cache_hit_rate: float = 0.0
    num_prompt_tokens: int = 0
    num_cached_tokens: int = 0
    num_generated_tokens: int = 0
    num_retractions: int = 0
    cached_tokens_device: int = 0
    cached_tokens_host: int = 0
    cached_tokens_storage: int = 0
    prefetched_tokens: int = 0
    stored_tokens: int = 0
    backed_up_tokens: int = 0
    loaded_tokens: int = 0
    gen_throughput: float = 0.0
    cached_tokens_remote: int = 0  # fetched from another node (the cross-node page index)

    def cached_tokens_by_tier(self) -> dict[str, int]:
        return {"device": self.cached_tokens_device, "host": self.cached_tokens_host,
                "storage": self.cached_tokens_storage, "remote": self.cached_tokens_remote}


@dataclass(frozen=True, slots=True)
class CacheFlush:
    """The scheduler's answer to a prefix-cache flush (`/flush_cache`): refused, with why,
    while requests are live."""

    flushed: bool
    message: str = ""
    freed_pages: int = 0  # device pages the cache gave back
