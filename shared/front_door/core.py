"""What the public edge (HTTP, OpenAI, native, gRPC `Generation`) needs from the core behind it.

Three cores implement it: one mesh's `Router` and its data-parallel `ReplicaSet`
(services/tokenizer/), and the router service's `NodeSet`, which sends each request to one of
several meshes (services/router/). The edge calls nothing else, so it serves any of them.

Invariants every implementation keeps:
- `build` validates and tokenizes (InvalidRequestError naming the field; UnavailableError
  while it cannot build yet) and never submits; `submit` takes a built request, whose id is
  not live, and returns its stream at once (UnavailableError while not `ready`).
- A submitted request's stream yields its deltas in order and ends with exactly one finishing
  delta (usage set) or one exception (UnavailableError when what held it went away).
- `abort` ends a live request now (its stream gets a final "abort" delta); `abort_as` does so
  only for the caller that owns it (PermissionDeniedError otherwise). Both answer whether
  the id was live here.
- `ready` is true exactly while new requests can be taken; `wait_ready` /
  `wait_disconnected` return once it is true / false. `run` serves until cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from radixmesh.shared.api_keys import Owner
from radixmesh.shared.front_door.live_request import RequestStream
from radixmesh.shared.front_door.request_builder import RequestBody
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.trace_context import TraceContext


class FrontDoorCore(Protocol):
    """The core behind the edge; see the module's invariants."""

    @property
    def ready(self) -> bool: ...

    @property
    def info(self) -> ModelInfo | None: ...  # the model served; None until first connected

    @property
    def num_live(self) -> int: ...  # requests submitted and not finished

    async def run(self) -> None: ...
    async def wait_ready(self) -> None: ...
    async def wait_disconnected(self) -> None: ...

    def build(self, rid: str | None, body: Mapping | RequestBody,
              trace: TraceContext = ...) -> TokenizedRequest: ...

    def submit(self, request: TokenizedRequest, owner: Owner = None) -> RequestStream: ...
    def abort(self, rid: str) -> bool: ...
    def abort_as(self, caller: Owner, rid: str) -> bool: ...
    async def get_load(self) -> SchedulerLoad: ...
    async def flush_cache(self) -> CacheFlush: ...
