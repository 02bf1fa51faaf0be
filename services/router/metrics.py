"""The router's own Prometheus metrics, beside the front door's (`radixmesh:router_*`, on the
same registry, so one /metrics serves both): requests per node, each choice's reason, how
much of each prompt the chosen node was believed to hold, the nodes usable now, and how often
each node was found failing."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from radixmesh.shared.front_door.metrics import MODEL_LABEL, FrontDoorMetrics

MATCH_BUCKETS = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0)


class RouterMetrics:
    def __init__(self, front_door: FrontDoorMetrics, model_name: str) -> None:
        registry = front_door.registry
        self._model = model_name
        self.requests = Counter("radixmesh:router_requests", "requests sent to each node "
                                "(a retry counts on both)", [MODEL_LABEL, "node"],
                                registry=registry)
        self.decisions = Counter("radixmesh:router_decisions", "node choices, by the reason "
                                 "the policy gave", [MODEL_LABEL, "reason"], registry=registry)
        self.prefix_match = Histogram("radixmesh:router_prefix_match_ratio", "share of the "
                                      "prompt the chosen node was believed to hold",
                                      [MODEL_LABEL], buckets=MATCH_BUCKETS,
                                      registry=registry).labels(model_name)
        self.retries = Counter("radixmesh:router_retries", "requests sent again to another "
                               "node after theirs failed before a first token", [MODEL_LABEL],
                               registry=registry).labels(model_name)
        self.node_failures = Counter("radixmesh:router_node_failures", "times a node was "
                                     "found failing: a probe it did not answer (unreachable, "
                                     "a TLS handshake that failed, ...) or a request's call "
                                     "it broke", [MODEL_LABEL, "node"], registry=registry)
        self.nodes_usable = Gauge("radixmesh:router_nodes_usable", "nodes the router can send "
                                  "requests to", [MODEL_LABEL], registry=registry).labels(model_name)

    def on_choice(self, node: str, reason: str, matched_tokens: int, prompt_tokens: int) -> None:
        self.requests.labels(self._model, node).inc()
        self.decisions.labels(self._model, reason).inc()
        self.prefix_match.observe(matched_tokens / prompt_tokens if prompt_tokens else 0.0)

    def node_failed(self, node: str) -> None:
        self.node_failures.labels(self._model, node).inc()

    def requests_per_node(self) -> dict[str, float]:
        """Requests sent to each node so far (for server info)."""
        return {sample.labels["node"]: sample.value
                for metric in self.requests.collect() for sample in metric.samples
                if sample.name.endswith("_total")}
