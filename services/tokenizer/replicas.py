"""Data parallelism at the front door: one Router per replica (a scheduler and its worker
group), all fed by one subscription to the one detokenizer (`text_feed.py`: each delta
crosses the wire once and goes to the Router holding its request), behind the interface of a
single Router.

A new request goes to the replica holding most of its prompt unless loads are far apart
(`shared/replica_choice.py`, over an approximate radix tree of what was sent where); an abort
goes to the replica that holds the request. Replicas fail alone: a replica whose link breaks
fails only its own requests (its Router does that) and takes no new ones until it is back,
while the others serve on. Losing the detokenizer fails every replica's requests. The front
door is ready while any replica is.

Invariants: a request id is live in at most one replica's Router, the one the feed names as
its owner; `ready` is true exactly while some replica's Router is ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import cast

from radixmesh.services.tokenizer.router import Router
from radixmesh.services.tokenizer.text_feed import TextFeed
from radixmesh.shared.api_keys import Owner
from radixmesh.shared.errors import InvalidRequestError, UnavailableError
from radixmesh.shared.front_door.combined import combined_flush, combined_load
from radixmesh.shared.front_door.live_request import RequestStream
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.readiness import Readiness
from radixmesh.shared.front_door.request_builder import RequestBody
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.prefix_oracle import SentPrefixes
from radixmesh.shared.replica_choice import DEFAULT_RULE, ChoiceRule, choose_replica
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.trace_context import NO_TRACE, TraceContext

logger = logging.getLogger(__name__)


class ReplicaSet:
    def __init__(self, routers: Sequence[Router], feed: TextFeed,
                 rule: ChoiceRule = DEFAULT_RULE,
                 metrics: FrontDoorMetrics | None = None) -> None:
        """`feed`: the subscription every one of `routers` was made with; run here."""
        if not routers:
            raise ValueError("a replica set needs at least one replica")
        self._routers = list(routers)
        self.feed = feed
        self._metrics = metrics
        self._rule = rule
        self._oracle = SentPrefixes(len(routers))
        self._readiness = Readiness(lambda: self.ready)  # changes with the replicas'

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return any(router.ready for router in self._routers)

    @property
    def info(self) -> ModelInfo | None:
        return next((router.info for router in self._ready_routers()),
                    self._routers[0].info)

    @property
    def routers(self) -> tuple[Router, ...]:
        """One per replica, in the order of --scheduler-address."""
        return tuple(self._routers)

    @property
    def num_live(self) -> int:
        return sum(router.num_live for router in self._routers)

    async def run(self) -> None:
        """Runs the feed and every replica's Router (each reconnecting by itself) until
        cancelled."""
        await asyncio.gather(self.feed.run(), *(router.run() for router in self._routers),
                             *(self._watch(router) for router in self._routers))

    async def wait_ready(self) -> None:
        await self._readiness.wait_ready()

    async def wait_disconnected(self) -> None:
        await self._readiness.wait_disconnected()

    async def _watch(self, router: Router) -> None:
        while True:
            await router.wait_ready()
            self._announce()
            await router.wait_disconnected()
            self._announce()

    def _announce(self) -> None:
        if self._metrics is not None:
            self._metrics.replicas_ready.set(len(self._ready_routers()))
        self._readiness.changed()

    # ---- requests --------------------------------------------------------------------------

    def build(self, rid: str | None, body: Mapping | RequestBody,
              trace: TraceContext = NO_TRACE) -> TokenizedRequest:
        if rid and self._holder(rid) is not None:
            raise InvalidRequestError("rid", f"request id {rid!r} is already in use")
        router = next(iter(self._ready_routers()), None)
        if router is None:
            raise UnavailableError("no replica of the mesh is connected")
        return router.build(rid, body, trace)

    def submit(self, request: TokenizedRequest, owner: Owner = None) -> RequestStream:
        if self._holder(request.rid) is not None:
            raise InvalidRequestError("rid", f"request id {request.rid!r} is already in use")
        loads = {index: router.num_live for index, router in enumerate(self._routers)
                 if router.ready}
        if not loads:
            raise UnavailableError("no replica of the mesh is connected")
        choice = choose_replica(request.input_ids, loads, self._oracle, self._rule)
        logger.debug("request %s -> replica %d (%s, %d tokens held)", request.rid,
                     choice.replica, choice.reason, choice.matched_tokens)
        return self._routers[choice.replica].submit(request, owner)

    def abort(self, rid: str) -> bool:
        router = self._holder(rid)
        return router is not None and router.abort(rid)

    def abort_as(self, caller: Owner, rid: str) -> bool:
        router = self._holder(rid)
        return router is not None and router.abort_as(caller, rid)

    async def get_load(self) -> SchedulerLoad:
        """The replicas' loads added up (usage averaged, the hit rate from the sums)."""
        loads = [await router.get_load() for router in self._ready_routers()]
        return combined_load(loads, "no replica of the mesh is connected")

    async def flush_cache(self) -> CacheFlush:
        """Every replica's prefix cache, and what was sent where; refused if any refuses."""
        outcome = combined_flush([await router.flush_cache()
                                  for router in self._ready_routers()])
        if outcome.flushed:
            self._oracle = SentPrefixes(len(self._routers))
        return outcome

    def _holder(self, rid: str) -> Router | None:
        return cast(Router | None, self.feed.owner(rid))  # the feed's sinks are our Routers

    def _ready_routers(self) -> list[Router]:
        return [router for router in self._routers if router.ready]
