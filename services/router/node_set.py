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
import time
import uuid
from collections.abc import Callable, Mapping

from radixmesh.services.router.metrics import RouterMetrics
from radixmesh.services.router.node_link import NodeFailure
from radixmesh.services.router.node_pool import Node, NodePool
from radixmesh.shared.api_keys import Owner, PermissionDeniedError, may_abort
from radixmesh.shared.errors import InvalidRequestError, RadixMeshError, UnavailableError
from radixmesh.shared.front_door.live_request import LiveRequest, RequestStream
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.request_builder import RequestBody, RequestBuilder
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.prefix_oracle import BestOf, PrefixLookup
from radixmesh.shared.replica_choice import ChoicePolicy, with_fetch
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenizedRequest
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder, now_ns
from radixmesh.shared.tokenizer import TextTokenizer
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)
MAX_RID_LENGTH = 256
ROUTE_SPAN = "route"
ATTEMPTS = 2  # the first node, then one other
# Makes the node pool, given the set's callbacks: a node's usability changed, a node's cache
# is gone.
PoolFactory = Callable[[Callable[[Node, bool], None], Callable[[str], None]], NodePool]


@dataclasses.dataclass(eq=False)
class _Live:
    live: LiveRequest
    task: asyncio.Task | None = None
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
        self._metrics = metrics
        self._router_metrics = router_metrics
        self._recorder = recorder
        self._interval = discovery_interval
        self._allow_special = allow_special_tokens_in_content
        self._builder: RequestBuilder | None = None
        self.info: ModelInfo | None = None
        self._live: dict[str, _Live] = {}
        self._changed = asyncio.Event()  # some node's usability changed

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
        while not self.ready:
            await self._next_change()

    async def wait_disconnected(self) -> None:
        while self.ready:
            await self._next_change()

    async def _next_change(self) -> None:
        await self._changed.wait()

    def _node_changed(self, node: Node, usable: bool) -> None:
        if usable and node.info is not None:
            self.oracle.learn(node.info.page_size, node.info.key_namespace)
        if usable and node.info is not None and self._builder is None:
            self.info = node.info
            self._builder = RequestBuilder(self._tokenizer, node.info.vocab_size,
                                           node.info.context_len, node.info.max_total_tokens,
                                           self._allow_special)
        self._router_metrics.nodes_usable.set(len(self.pool.usable()))
        self._changed.set()
        self._changed = asyncio.Event()

    def _forget(self, node_id: str) -> None:
        self.oracle.forget(node_id)

    # ---- requests in -----------------------------------------------------------------------

    def build(self, rid: str | None, body: Mapping | RequestBody,
              trace: TraceContext = NO_TRACE) -> TokenizedRequest:
        if self._builder is None:
            raise UnavailableError("the router has reached no node yet")
        rid = rid or uuid.uuid4().hex
        if len(rid) > MAX_RID_LENGTH:
            raise InvalidRequestError("rid", f"must be at most {MAX_RID_LENGTH} characters")
        if rid in self._live:
            raise InvalidRequestError("rid", f"request id {rid!r} is already in use")
        return dataclasses.replace(self._builder.build(rid, body), trace=trace)

    def submit(self, request: TokenizedRequest, owner: Owner = None) -> RequestStream:
        if not self.ready:
            raise UnavailableError("no node is usable")
        if request.rid in self._live:
            raise InvalidRequestError("rid", f"request id {request.rid!r} is already in use")
        entry = _Live(LiveRequest(request.rid, len(request.input_ids), owner))
        self._live[request.rid] = entry
        entry.task = asyncio.create_task(self._serve(entry, request), name=request.rid)
        return RequestStream(entry.live, self.abort)

    def abort_as(self, caller: Owner, rid: str) -> bool:
        entry = self._live.get(rid)
        if entry is None:
            return False
        if not may_abort(entry.live.owner, caller):
            raise PermissionDeniedError(f"request {rid!r} was started with another API key")
        return self.abort(rid)

    def abort(self, rid: str) -> bool:
        entry = self._live.pop(rid, None)
        if entry is None:
            return False
        if entry.task is not None:
            entry.task.cancel()  # cancels the node's call: the node aborts it
        self._finish(entry.live, TextDelta(rid, "", [], FinishReason(
            FinishKind.ABORT, message="aborted by the client")))
        return True

    # ---- one request -----------------------------------------------------------------------

    async def _serve(self, entry: _Live, request: TokenizedRequest) -> None:
        live, tried = entry.live, set[str]()
        try:
            for attempt in range(ATTEMPTS):
                node = await self._choose(request, tried)
                tried.add(node.node_id)
                if attempt:
                    self._router_metrics.retries.inc()
                try:
                    if await self._stream_from(node, request, entry):
                        return
                except NodeFailure as error:
                    self.pool.failed(node, error)
                    if entry.delivered:
                        raise UnavailableError(f"node {node.node_id} failed mid-stream: "
                                               f"{error}") from None
                    if attempt + 1 == ATTEMPTS:
                        raise
                    logger.info("request %s: node %s failed before its first token; "
                                "sending it to another node", request.rid, node.node_id)
        except RadixMeshError as error:
            if self._live.pop(request.rid, None) is not None:
                live.queue.put_nowait(error)
        except Exception as error:  # a bug: the client hears of it rather than hanging
            logger.exception("request %s", request.rid)
            if self._live.pop(request.rid, None) is not None:
                live.queue.put_nowait(UnavailableError(f"the router failed: {error}"))

    async def _stream_from(self, node: Node, request: TokenizedRequest, entry: _Live) -> bool:
        """Passes the node's deltas on; True once the finishing one went out."""
        live, output = entry.live, list[int]()
        sent_at = node.sent()
        try:
            async for delta in node.link.generate(request):
                if self._live.get(request.rid) is None:
                    return True  # aborted meanwhile
                self._count_tokens(live, delta)
                output += delta.token_ids
                if delta.finish is not None:
                    del self._live[request.rid]
                    self._finish(live, delta)
                    # The node caches the answer too: a next turn that quotes it matches.
                    self.oracle.record(node.node_id, [*request.input_ids, *output],
                                       request.cache_salt)
                    return True
                if delta.text or delta.token_ids:
                    entry.delivered = True
                    live.queue.put_nowait(delta)
        finally:
            node.done(sent_at)
        raise NodeFailure(f"node {node.node_id} ended the stream without a finish")

    async def _choose(self, request: TokenizedRequest, tried: set[str]) -> Node:
        """The node for `request` among the usable ones not tried yet, as the `route` span."""
        started = now_ns()
        nodes = {node.node_id: node for node in self.pool.usable() if node.node_id not in tried}
        if not nodes:
            raise UnavailableError("no node is usable" + (" (the one tried failed)"
                                                          if tried else ""))
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

    def _count_tokens(self, live: LiveRequest, delta: TextDelta) -> None:
        if not delta.token_ids:
            return
        now = time.perf_counter()
        live.num_output_tokens += len(delta.token_ids)
        if live.first_token_at is None:
            live.first_token_at = now
        since_previous = None if live.last_token_at is None else now - live.last_token_at
        self._metrics.on_tokens(len(delta.token_ids), since_previous, now - live.created)
        live.last_token_at = now

    def _finish(self, live: LiveRequest, delta: TextDelta) -> None:
        assert delta.finish is not None
        if delta.usage is None:
            delta = dataclasses.replace(delta, usage=live.usage_so_far())
        self._metrics.on_finish(delta.finish, delta.usage, time.perf_counter() - live.created)
        live.queue.put_nowait(delta)

    # ---- the nodes together ----------------------------------------------------------------

    async def get_load(self) -> SchedulerLoad:
        """The usable nodes' loads added up (usage averaged, the hit rate from the sums)."""
        loads = []
        for node in self.pool.usable():
            try:
                states = (await node.link.server_info()).get("internal_states") or [{}]
            except RadixMeshError:
                continue
            known = {name: value for name, value in states[0].items()
                     if name in SchedulerLoad.__dataclass_fields__}
            loads.append(SchedulerLoad(**known))
        if not loads:
            raise UnavailableError("no node is usable")
        total = SchedulerLoad(**{field.name: sum(getattr(load, field.name) for load in loads)
                                 for field in dataclasses.fields(SchedulerLoad)})
        return dataclasses.replace(
            total, token_usage=total.token_usage / len(loads),
            cache_hit_rate=(total.num_cached_tokens / total.num_prompt_tokens
                            if total.num_prompt_tokens else 0.0))

    async def flush_cache(self) -> CacheFlush:
        """Every usable node's prefix cache; refused if any refuses (or requests are live)."""
        if self._live:
            return CacheFlush(False, f"cache not flushed: {len(self._live)} requests are "
                              "running; retry when the server is idle")
        outcomes = [await node.link.flush_cache() for node in self.pool.usable()]
        refused = [outcome for outcome in outcomes if not outcome.flushed]
        if refused:
            return refused[0]
        for node in self.pool.nodes:
            self.oracle.forget(node)
        return CacheFlush(True, "", sum(outcome.freed_pages for outcome in outcomes))

    def nodes_report(self) -> list[dict]:
        """Each node as server info shows it."""
        sent = self._router_metrics.requests_per_node()
        return [{"node_id": node.node_id, "address": node.address, "usable": node.usable,
                 "static": node.static, "epoch": node.epoch, "in_flight": node.in_flight,
                 "requests": int(sent.get(node.node_id, 0)),
                 "load": dataclasses.asdict(node.load)}
                for node in self.pool.nodes.values()]
