"""The router's flags: no node source is a clear error, lists split, bad values named; and
every core the shared edge serves has what `FrontDoorCore` names."""

from __future__ import annotations

import pytest

from radixmesh.services.router.config import RouterConfig
from radixmesh.services.router.node_set import NodeSet
from radixmesh.services.tokenizer.replicas import ReplicaSet
from radixmesh.services.tokenizer.router import Router
from radixmesh.shared.front_door.core import FrontDoorCore


def test_the_router_needs_a_node_source() -> None:
    with pytest.raises(ValueError, match="--node-urls HOST:PORT .* --redis-url"):
        RouterConfig()
    config = RouterConfig(node_urls=("a:1,b:2", " c:3 "))
    assert config.node_urls == ("a:1", "b:2", "c:3")
    assert RouterConfig(redis_url="redis://127.0.0.1:6379/0").node_urls == ()


@pytest.mark.parametrize(("flags", "named"), [
    ({"redis_url": "http://x"}, "--redis-url"),
    ({"node_urls": ("a:1",), "policy": "fastest"}, "--policy"),
    ({"node_urls": ("a:1",), "cache_threshold": 1.5}, "--cache-threshold"),
    ({"node_urls": ("a:1",), "balance_rel_threshold": 0.5}, "--balance-rel-threshold"),
])
def test_bad_router_flags_are_named(flags: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        RouterConfig(**flags)


@pytest.mark.parametrize("core", [Router, ReplicaSet, NodeSet])
def test_every_core_has_what_the_edge_calls(core: type) -> None:
    members = [name for name in dir(FrontDoorCore) if not name.startswith("_")]
    instance_attributes = {"info"}  # Router sets it in __init__
    missing = [name for name in members
               if not hasattr(core, name) and name not in instance_attributes]
    assert not missing
