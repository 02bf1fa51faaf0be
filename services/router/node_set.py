"""The router's core: the front door's interface (`shared/front_door/core.py`) over several
nodes. A request is tokenized here (once), a node is chosen for it (a policy over what each
node holds and how busy it is), and its token ids go to that node's public `Generate`; the
node's deltas come back as the request's stream.

The choice is the policy's, over each node's `busy` (its last heartbeat's load plus what was
sent since, `node_pool.Node`) and the oracle's estimate (`prefix_oracle.BestOf`: per node the
larger of the page index's answer and what was sent where). Each decision's reason goes to the
`route` span and `radixmesh:router_decisions_total`; "balance_fetch" is a request moved off the
busy holder of its prefix to a node whose hicache will fetch the pages
(`replica_choice.with_fetch`).

Invariants:
- A request is live here from `submit` until its stream got its finishing delta or its error;
  at most one node serves it at a time, and its client sees one node's output only.
- A node that fails before the request's first delta reached the client: the request is sent
  once more, to another node (the failed one leaves the choice, `NodePool.failed`). Failing
  after that, the request ends with UnavailableError (no output twice).
- `abort` cancels the node's call (the node aborts the request and frees its pages) and ends
  the stream with an "abort" finish.
- Ready while at least one node is usable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping

from radixmesh.services.router.metrics import RouterMetrics
from radixmesh.services.router.node_link import NodeFailure
from radixmesh.services.router.node_pool import Node, NodePool
from radixmesh.shared.api_keys import Owner
from radixmesh.shared.errors import RadixMeshError, UnavailableError
from radixmesh.shared.front_door.combined import combined_flush, combined_load
from radixmesh.shared.front_door.live_request import LiveRequest, RequestStream
from radixmesh.shared.front_door.live_requests import LiveRequests
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.readiness import Readiness
from radixmesh.shared.front_door.request_builder import RequestBody, RequestBuilder
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.prefix_oracle import BestOf, PrefixLookup
from radixmesh.shared.replica_choice import ChoicePolicy, with_fetch
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.tokenizer import TextTokenizer
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)
ROUTE_SPAN = "route"
ATTEMPTS = 2  # the first node, then one other
# Makes the node pool, given the set's callbacks: a node's usability changed, a node's cache
# is gone.
PoolFactory = Callable[[Callable[[Node, bool], None], Callable[[str], None]], NodePool]


@dataclasses.dataclass(slots=True, eq=False)
class _Routed(LiveRequest):
    task: asyncio.Task | None = None  # serves it: chooses a node, streams from it
    delivered: bool = False  # some output reached the client: no retry elsewhere


class NodeSet:
    def __init__(self, pool_factory: PoolFactory, tokenizer: TextTokenizer | None, policy: ChoicePolicy,
                 oracle: BestOf, metrics: FrontDoorMetrics, router_metrics: RouterMetrics,
                 recorder: SpanRecorder = DISABLED, discovery_interval: float = 1.0,
                 allow_special_tokens_in_content: bool = False) -> None:
        """`pool_factory(on_change, forget)`: the NodePool, given this set's callbacks."""
        self.pool: NodePool = pool_factory(self._node_changed, self._forget)
        self._tokenizer = tokenizer
        self._policy = policy
        self.oracle = oracle
        self._router_metrics = router_metrics
        self._recorder = recorder
        self._interval = discovery_interval
        self._allow_special = allow_special_tokens_in_content
        self._builder: RequestBuilder | None = None
        self.info: ModelInfo | None = None
        self._live: LiveRequests[_Routed] = LiveRequests(metrics)
        self._readiness = Readiness(lambda: self.ready)  # changes with nodes' usability

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.pool.usable()) and self._builder is not None

    @property
    def num_live(self) -> int:
        return len(self._live)

    async def run(self) -> None:
        """Learns of nodes and probes failed ones every discovery interval, until cancelled."""
        try:
            while True:
                try:
                    await self.pool.refresh()
                except Exception:  # a bug must not stop discovery for good
                    logger.exception("node discovery")
                await asyncio.sleep(self._interval)
        finally:
            await self.pool.close()

    async def wait_ready(self) -> None:
        await self._readiness.wait_ready()

    async def wait_disconnected(self) -> None:
        await self._readiness.wait_disconnected()

    def _node_changed(self, node: Node, usable: bool) -> None:
        if usable and node.info is not None:
            self.oracle.learn(node.info.page_size, node.info.key_namespace)
        if usable and node.info is not None and self._builder is None:
            self.info = node.info
            self._builder = RequestBuilder(self._tokenizer, node.info.vocab_size,
                                           node.info.context_len, node.info.max_total_tokens,
                                           self._allow_special)
        self._router_metrics.nodes_usable.set(len(self.pool.usable()))
        self._readiness.changed()

    def _forget(self, node_id: str) -> None:
        self.oracle.forget(node_id)

    # ---- requests in -----------------------------------------------------------------------

    def build(self, rid: str | None, body: Mapping | RequestBody,
              trace: TraceContext = NO_TRACE) -> TokenizedRequest:
        if self._builder is None:
            raise UnavailableError("the router has reached no node yet: "
                                   + self.pool.why_unusable())
        rid = self._live.new_rid(rid)
        return dataclasses.replace(self._builder.build(rid, body), trace=trace)

    def submit(self, request: TokenizedRequest, owner: Owner = None) -> RequestStream:
        if not self.ready:
            raise UnavailableError("no node is usable: " + self.pool.why_unusable())
        live = self._live.add(_Routed(request.rid, len(request.input_ids), owner))
        live.task = asyncio.create_task(self._serve(live, request), name=request.rid)
        return RequestStream(live, self.abort)

    def abort_as(self, caller: Owner, rid: str) -> bool:
        return self._live.check_owner(caller, rid) and self.abort(rid)

    def abort(self, rid: str) -> bool:
        live = self._live.abort(rid)
        if live is not None and live.task is not None:
            live.task.cancel()  # cancels the node's call: the node aborts it
        return live is not None

    # ---- one request -----------------------------------------------------------------------

    async def _serve(self, live: _Routed, request: TokenizedRequest) -> None:
        tried = set[str]()
        try:
            for attempt in range(ATTEMPTS):
                node = await self._choose(request, tried)
                tried.add(node.node_id)
                if attempt:
                    self._router_metrics.retries.inc()
                try:
                    if await self._stream_from(node, request, live):
                        return
                except NodeFailure as error:
                    self.pool.failed(node, error)
                    if live.delivered:
                        raise UnavailableError(f"node {node.node_id} failed mid-stream: "
                                               f"{error}") from None
                    if attempt + 1 == ATTEMPTS:
                        raise
                    logger.info("request %s: node %s failed before its first token; "
                                "sending it to another node", request.rid, node.node_id)
        except RadixMeshError as error:
            self._live.fail(request.rid, error)
        except Exception as error:  # a bug: the client hears of it rather than hanging
            logger.exception("request %s", request.rid)
            self._live.fail(request.rid, UnavailableError(f"the router failed: {error}"))

    async def _stream_from(self, node: Node, request: TokenizedRequest, live: _Routed) -> bool:
        """Passes the node's deltas on; True once the finishing one went out."""
        output = list[int]()
        sent_at = node.sent()
        try:
            async for delta in node.link.generate(request):
                if request.rid not in self._live:
                    return True  # aborted meanwhile
                self._live.count_tokens(live, delta)
                output += delta.token_ids
                if delta.finish is not None:
                    self._live.pop(request.rid)
                    self._live.finish(live, delta)
                    # The node caches the answer too: a next turn that quotes it matches.
                    self.oracle.record(node.node_id, [*request.input_ids, *output],
                                       request.cache_salt)
                    return True
                if delta.text or delta.token_ids:
                    live.delivered = True
                    live.queue.put_nowait(delta)
        finally:
            node.done(sent_at)
        raise NodeFailure(f"node {node.node_id} ended the stream without a finish")

    async def _choose(self, request: TokenizedRequest, tried: set[str]) -> Node:
        """The node for `request` among the usable ones not tried yet, as the `route` span."""
        started = now_ns()
        nodes = {node.node_id: node for node in self.pool.usable() if node.node_id not in tried}
        if not nodes:
            raise UnavailableError("no node is usable" + (" (the one tried failed)" if tried
                                                          else "") + ": "
                                   + self.pool.why_unusable())
        found = (await self.oracle.lookup_both(request.input_ids, request.cache_salt)
                 if self._policy.uses_prefixes else PrefixLookup({}, {}))
        nodes = {node_id: node for node_id, node in nodes.items()
                 if self.pool.nodes.get(node_id) is node and node.usable}  # still there
        if not nodes:
            raise UnavailableError("no node is usable")
        loads = {node_id: node.busy for node_id, node in nodes.items()}
        choice = with_fetch(self._policy.choose(request.input_ids, loads, found.held,
                                                self.oracle.held_tokens), found.fetchable)
        self.oracle.record(choice.replica, request.input_ids, request.cache_salt)
        self._router_metrics.on_choice(choice.replica, choice.reason, choice.matched_tokens,
                                       len(request.input_ids))
        self._recorder.record(ROUTE_SPAN, request.trace, started, now_ns(), {
            "radixmesh.node": choice.replica, "radixmesh.route.reason": choice.reason,
            "radixmesh.route.matched_tokens": choice.matched_tokens,
            "radixmesh.route.fetchable_tokens": found.fetchable,
            "radixmesh.route.load": loads[choice.replica],
            "radixmesh.route.candidates": len(nodes)})
        logger.debug("request %s -> node %s (%s, %d tokens held)", request.rid, choice.replica,
                     choice.reason, choice.matched_tokens)
        return nodes[choice.replica]

    # ---- the nodes together ----------------------------------------------------------------

    async def get_load(self) -> SchedulerLoad:
        """The usable nodes' loads added up (usage averaged, the hit rate from the sums)."""
        loads = list[SchedulerLoad]()
        for node in self.pool.usable():
            try:
                states = (await node.link.server_info()).get("internal_states") or [{}]
            except RadixMeshError:
                continue
            known = {name: value for name, value in states[0].items()
                     if name in SchedulerLoad.__dataclass_fields__}
            loads.append(SchedulerLoad(**known))
        return combined_load(loads, "no node is usable")

    async def flush_cache(self) -> CacheFlush:
        """Every usable node's prefix cache; refused if any refuses (or requests are live)."""
        refusal = self._live.busy_refusal()
        if refusal is not None:
            return refusal
        outcome = combined_flush([await node.link.flush_cache() for node in self.pool.usable()])
        if outcome.flushed:
            for node in self.pool.nodes:
                self.oracle.forget(node)
        return outcome

    def nodes_report(self) -> list[dict]:
        """Each node as server info shows it."""
        sent = self._router_metrics.requests_per_node()
        return [{"node_id": node.node_id, "address": node.address, "usable": node.usable,
                 "static": node.static, "epoch": node.epoch, "in_flight": node.in_flight,
                 "requests": int(sent.get(node.node_id, 0)), "tls": node.link.tls,
                 "failures": node.failures, "last_error": node.last_error,
                 "load": dataclasses.asdict(node.load)}
                for node in self.pool.nodes.values()]
