"""The page keys a router computes for a prompt are the ones the node's scheduler chains its
pages from: both take the namespace from `shared/mesh_info.worker_key_namespace`, so a prompt
the node cached is found in the page index under the keys the router asks for."""

from __future__ import annotations

import dataclasses

import pytest

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.host_cache import build_host_cache
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.shared.mesh_info import ModelInfo, worker_key_namespace
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.step import WorkerInfo

INFO = WorkerInfo(model_id="tiny", num_pages=16, page_size=2, context_len=256,
                  vocab_size=512, eos_token_ids=(2,), kv_dtype="bfloat16",
                  max_running_requests=4, num_layers=1, num_kv_heads=1, head_dim=8,
                  weights_fingerprint="ab12", tp_size=2)
CONFIG = SchedulerConfig(enable_hierarchical_cache=True)


@pytest.mark.parametrize("salt", [None, "", "tenant-a"])
def test_the_router_and_the_scheduler_key_a_prompt_alike(salt: str | None):
    host_cache = build_host_cache(CONFIG, INFO, PageAllocator(INFO.num_pages))
    assert host_cache is not None
    node_side = host_cache.cache.key_namespace
    router_side = ModelInfo.from_worker(INFO).key_namespace
    assert node_side == router_side == worker_key_namespace(INFO)
    assert host_cache.key_root == router_side.root()
    prompt = list(range(30, 39))
    assert (page_keys(node_side.with_salt(salt).root(), prompt, INFO.page_size)
            == page_keys(router_side.with_salt(salt).root(), prompt, INFO.page_size))


def test_the_namespace_names_model_weights_dtype_page_size_and_tp_layout():
    namespace = worker_key_namespace(INFO)
    assert namespace is not None
    assert (namespace.model_id, namespace.weights_fingerprint, namespace.kv_dtype,
            namespace.page_size, namespace.tp_layout) == ("tiny", "ab12", "bfloat16", 2, "tp2")
    unnamed_weights = worker_key_namespace(dataclasses.replace(INFO, weights_fingerprint=""))
    assert unnamed_weights is not None and unnamed_weights.weights_fingerprint == "unknown"
    assert unnamed_weights.root() != namespace.root()


def test_a_worker_without_kv_has_no_namespace_and_no_host_cache():
    no_kv = WorkerInfo(model_id="null", num_pages=16, page_size=1, context_len=64,
                       vocab_size=64, eos_token_ids=(2,), kv_dtype="none",
                       max_running_requests=4)
    assert worker_key_namespace(no_kv) is None
    assert ModelInfo.from_worker(no_kv).key_namespace is None
    assert build_host_cache(CONFIG, no_kv, PageAllocator(no_kv.num_pages)) is None
