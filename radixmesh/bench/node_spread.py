"""How a router spread a benchmark's requests over its nodes (`radixmesh bench --target
ROUTER`): the requests each node was sent, read from the router's gRPC `GetServerInfo`
(its `nodes` list) before and after the run. A target that is a single mesh has no `nodes`
list: no spread is reported."""

from __future__ import annotations

import json

import grpc

from radixmesh.shared.protos_gen import common_pb2, generate_pb2_grpc

INFO_TIMEOUT_S = 10.0


def router_nodes(address: str) -> list[dict] | None:
    """The `nodes` list of the router at `address`; None when the target is not a router or
    does not answer."""
    try:
        with grpc.insecure_channel(address) as channel:
            reply = generate_pb2_grpc.GenerationStub(channel).GetServerInfo(
                common_pb2.Empty(), timeout=INFO_TIMEOUT_S)
        nodes = json.loads(reply.json).get("nodes")
    except (grpc.RpcError, ValueError, AttributeError):
        return None
    return nodes if isinstance(nodes, list) else None


def requests_per_node(address: str) -> dict[str, int] | None:
    """Node id -> requests the router at `address` sent it so far (a retry counts on both);
    None when the target is not a router."""
    nodes = router_nodes(address)
    if nodes is None:
        return None
    return {str(node["node_id"]): int(node.get("requests", 0)) for node in nodes}


def usable_nodes(address: str) -> int:
    """How many nodes the router at `address` can send requests to (0: none, or no router)."""
    return sum(1 for node in router_nodes(address) or () if node.get("usable"))


def node_spread(before: dict[str, int] | None, after: dict[str, int] | None) -> dict | None:
    """The run's requests per node and the busiest node's share; None without a router."""
    if before is None or after is None:
        return None
    sent = {node: after[node] - before.get(node, 0) for node in sorted(after)}
    total = sum(sent.values())
    return {"requests_per_node": sent, "nodes": len(sent),
            "max_share": max(sent.values()) / total if total else 0.0}


def format_spread(spread: dict) -> str:
    per_node = ", ".join(f"{node} {count}" for node, count in
                         spread["requests_per_node"].items())
    return (f"spread over {spread['nodes']} nodes: {per_node} "
            f"(busiest {spread['max_share']:.0%})")
