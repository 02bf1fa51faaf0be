"""The router's gRPC link to one replica's scheduler: its `Submit` stream, `GetInfo`/`GetLoad`/
`FlushCache`, and its readiness (its gRPC health, watched: NOT_SERVING while it has lost its
worker or detokenizer). The detokenizer's side is `detokenizer_link.py`; `GrpcMeshLink` holds
both, for a Router that reads its own subscription (a single replica).

Everything gRPC stays in these files: every RPC failure is raised as UnavailableError, and
messages are converted with `shared/wire.py`, so the router only sees plain objects.
`greet` is the handshake (`shared/mesh_protocol.py`): a scheduler of another protocol is
refused with a HandshakeError naming both sides; one that predates the handshake (answers no
Hello) is taken as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.services.tokenizer.detokenizer_link import (
    UNARY_TIMEOUT_S,
    GrpcDetokenizerLink,
    GrpcTextSubscription,
    describe,
    greet,
)
from radixmesh.shared import wire
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.grpc_service import SERVING, open_channel
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.mesh_protocol import Hello
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.tls import ClientTLS

Reply = TypeVar("Reply")


class GrpcSubmitStream:
    """The tokenizer's half of the scheduler's client-streaming `Submit`."""

    def __init__(self, stub: internal_pb2_grpc.SchedulerStub) -> None:
        self._call = stub.Submit()

    async def send(self, requests: Sequence[TokenizedRequest], aborts: Sequence[str]) -> None:
        batch = internal_pb2.RequestBatch(
            requests=[wire.tokenized_request_to_proto(request) for request in requests],
            aborts=list(aborts))
        try:
            await self._call.write(batch)
        except (grpc.RpcError, asyncio.InvalidStateError) as exc:
            raise UnavailableError(f"scheduler stream broke: {describe(exc)}") from exc

    async def wait_closed(self) -> None:
        """Returns never: raises once the scheduler ends or breaks the stream."""
        try:
            await self._call
        except grpc.RpcError as exc:
            raise UnavailableError(f"scheduler stream broke: {describe(exc)}") from exc
        raise UnavailableError("the scheduler closed the request stream")

    def cancel(self) -> None:
        self._call.cancel()


class GrpcSchedulerLink:
    def __init__(self, scheduler_address: str, hello: Hello | None = None,
                 tls: ClientTLS | None = None) -> None:
        self.scheduler_address = scheduler_address
        self.hello = hello or Hello("tokenizer", implementation="tokenizer")
        self._scheduler_channel = open_channel(scheduler_address, tls)
        self._scheduler = internal_pb2_grpc.SchedulerStub(self._scheduler_channel)

    async def get_info(self) -> ModelInfo:
        return wire.model_info_from_proto(await self._ask_scheduler(self._scheduler.GetInfo))

    async def get_load(self) -> SchedulerLoad:
        return wire.scheduler_load_from_proto(await self._ask_scheduler(self._scheduler.GetLoad))

    async def flush_cache(self) -> CacheFlush:
        reply = await self._ask_scheduler(self._scheduler.FlushCache)
        return CacheFlush(reply.flushed, reply.message, reply.freed_pages)

    async def _ask_scheduler(self, rpc: Callable[..., Awaitable[Reply]]) -> Reply:
        """One argument-less unary call; any gRPC failure means the mesh is unavailable."""
        try:
            return await rpc(common_pb2.Empty(), timeout=UNARY_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise UnavailableError(
                f"scheduler at {self.scheduler_address}: {describe(exc)}") from exc

    async def greet(self) -> None:
        """The handshake with the scheduler: HandshakeError if it speaks another protocol,
        UnavailableError if it cannot be reached."""
        await greet(self.hello, self._scheduler.Hello, "scheduler", self.scheduler_address)

    async def watch_serving(self) -> AsyncIterator[bool]:
        """The scheduler's readiness as it changes (its gRPC health, watched), starting with
        the current one; raises UnavailableError when the watch breaks. A scheduler without
        the health service counts as ready for as long as the link holds."""
        call = health_pb2_grpc.HealthStub(self._scheduler_channel).Watch(
            health_pb2.HealthCheckRequest())
        try:
            async for status in call:
                yield status.status == SERVING
        except grpc.RpcError as exc:
            if not (isinstance(exc, grpc.aio.AioRpcError)
                    and exc.code() is grpc.StatusCode.UNIMPLEMENTED):
                raise UnavailableError(f"scheduler at {self.scheduler_address}: "
                                       f"{describe(exc)}") from exc
            yield True
            await asyncio.Event().wait()  # until the connection is torn down
        finally:
            call.cancel()
        raise UnavailableError(f"the scheduler at {self.scheduler_address} ended its health "
                               "watch")

    def open_submit(self) -> GrpcSubmitStream:
        return GrpcSubmitStream(self._scheduler)

    async def close(self) -> None:
        await self._scheduler_channel.close()


class GrpcMeshLink(GrpcSchedulerLink):
    """A scheduler and the detokenizer on one link: what a Router alone needs (it then reads
    its own subscription). Replicas of one front door share a `GrpcDetokenizerLink` instead."""

    def __init__(self, scheduler_address: str, detokenizer_address: str,
                 hello: Hello | None = None, tls: ClientTLS | None = None) -> None:
        super().__init__(scheduler_address, hello, tls)
        self.detokenizer = GrpcDetokenizerLink(detokenizer_address, self.hello, tls)
        self.detokenizer_address = detokenizer_address

    async def greet_detokenizer(self) -> None:
        await self.detokenizer.greet_detokenizer()

    async def open_subscription(self) -> GrpcTextSubscription:
        return await self.detokenizer.open_subscription()

    async def close(self) -> None:
        await super().close()
        await self.detokenizer.close()
