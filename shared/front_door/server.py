"""The public edge's servers over one core, as a node's tokenizer service and the router both
run them: gRPC `Generation` (with the request-size and stream limits), OpenAI and native HTTP,
and health that follows the core's readiness.

A subclass makes its core (`make_core`) and adds what is its own around it: `started` (more
tasks: a node's registration), `withdraw` (stop being advertised, before the servers stop),
`close` (what the core used: mesh links, a Redis client) and `server_info` (more in the
document: the router's nodes).

Invariants: health (gRPC health service and `/health`) reads SERVING exactly while the core is
`ready`; the process may start before whatever the core needs, and serves once it is there.
`stop` ends the background tasks, then advertising, then the servers, then the core's
resources, and tracing last, so the spans of requests the servers' stop ended are flushed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from radixmesh.shared.api_keys import warn_if_open
from radixmesh.shared.front_door.core import FrontDoorCore
from radixmesh.shared.front_door.flags import FrontDoorFlags
from radixmesh.shared.front_door.grpc_decoding import add_tolerant_service
from radixmesh.shared.front_door.http_limits import grpc_limit_options, start_http
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.native_api import server_info
from radixmesh.shared.front_door.openai_api import OpenAIApi
from radixmesh.shared.front_door.servicer import GENERATION, GenerationServicer
from radixmesh.shared.grpc_service import ServiceServer, host_port, start_server
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.tls import public_server_tls
from radixmesh.shared.tokenizer import TextTokenizer, load_tokenizer
from radixmesh.shared.tracing import start_tracing, stop_tracing

logger = logging.getLogger(__name__)
# gRPC itself refuses messages past this multiple of the limit; below it the servicer answers
# INVALID_ARGUMENT with the sizes, which says more than RESOURCE_EXHAUSTED would.
GRPC_HARD_LIMIT_FACTOR = 4


class FrontDoorServer:
    """See the module docstring. `role`: the tracing role; `what`: how warnings name it."""

    role: str
    what: str = "the front door"

    def __init__(self, config: FrontDoorFlags) -> None:
        self.config = config
        self.metrics = FrontDoorMetrics(config.served_model_name)
        self.api_keys = config.api_keys  # read once: the flags', else $RADIXMESH_API_KEY's
        self.recorder: SpanRecorder = DISABLED  # until `start`, and while tracing is off
        self.core: FrontDoorCore | None = None  # from `start`
        self._grpc: ServiceServer | None = None
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self._serving = asyncio.Event()  # health says SERVING

    # ---- what a subclass provides ----------------------------------------------------------

    def make_core(self, tokenizer: TextTokenizer) -> FrontDoorCore:
        raise NotImplementedError

    async def started(self) -> None:
        """After the servers and the core's tasks started."""

    async def withdraw(self) -> None:
        """At stop, before the servers stop."""

    async def close(self) -> None:
        """At stop, after the servers stopped."""

    async def server_info(self) -> dict:
        """The server info document of GET /get_server_info and gRPC GetServerInfo."""
        return await server_info(self.core, self.config)

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        self.recorder = start_tracing(self.role, config)
        tokenizer = await asyncio.to_thread(load_tokenizer, config.model_path, config.revision,
                                            config.hf_token)
        self.core = self.make_core(tokenizer)
        warn_if_open(self.api_keys, config.host, self.what)
        await self._start_grpc()
        app = OpenAIApi(self.core, self.metrics, config, self.recorder, self.api_keys,
                        self.server_info).build_app()
        # With --max-connections, --http-header-timeout and client disconnects as aborts.
        self._http, _ = await start_http(app, config)
        self.spawn(self.core.run(), "core")
        self.spawn(self._track_health(), "health")
        await self.started()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        """Runs `coroutine` until `stop`."""
        self._tasks.append(asyncio.create_task(coroutine, name=name))

    async def wait_ready(self) -> None:
        """Until the core is ready and health reports SERVING."""
        await self._serving.wait()

    @property
    def serving(self) -> bool:
        return self._serving.is_set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.withdraw()
        if self._http is not None:
            await self._http.cleanup()
        if self._grpc is not None:
            await self._grpc.stop(grace=1.0)
        await self.close()
        # The flush blocks (at most 5 s), so off the event loop.
        await asyncio.to_thread(stop_tracing, self.recorder)
        self.recorder = DISABLED

    async def _start_grpc(self) -> None:
        config = self.config
        servicer = GenerationServicer(self.core, self.metrics, config.served_model_name,
                                      config.max_request_bytes, self.recorder,
                                      limits=config.sampling_limits,
                                      max_streams=config.max_concurrent_streams,
                                      api_keys=self.api_keys,
                                      max_queued_requests=config.max_queued_requests,
                                      server_info=self.server_info)
        limit = config.max_request_bytes * GRPC_HARD_LIMIT_FACTOR
        self._grpc = await start_server(
            host_port(config.host, config.grpc_port),
            # Malformed requests end INVALID_ARGUMENT, not UNKNOWN (grpc_decoding.py).
            lambda server: add_tolerant_service(GENERATION, servicer, server),
            [GENERATION.full_name], options=[("grpc.max_receive_message_length", limit),
                                             *grpc_limit_options(config)],
            tls=public_server_tls(config))

    async def _track_health(self) -> None:
        """Mirrors the core's readiness into the gRPC health service."""
        while True:
            await self.core.wait_ready()
            await self._grpc.set_serving(True)
            self._serving.set()
            await self.core.wait_disconnected()
            self._serving.clear()
            await self._grpc.set_serving(False)


async def serve_until_cancelled(server: FrontDoorServer) -> None:
    """Runs a front door until cancelled; stops its servers cleanly on the way out."""
    try:
        await server.start()
        await asyncio.Event().wait()
    finally:
        await server.stop()
