"""The router's gRPC link to the mesh: the scheduler's `Submit` stream and `GetInfo`/`GetLoad`,
a `Subscribe` stream from the detokenizer, and the scheduler's readiness (its gRPC health,
watched: NOT_SERVING while it has lost its worker or detokenizer).

Everything gRPC stays in this file: every RPC failure is raised as UnavailableError, and
messages are converted with `shared/wire.py`, so the router only sees plain objects.
`greet` is the handshake (`shared/mesh_protocol.py`): a scheduler or detokenizer of another
protocol is refused with a HandshakeError naming both sides; one that predates the handshake
(answers no Hello) is taken as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.shared import wire
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.grpc_service import SERVING, open_channel
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo, SchedulerLoad
from radixmesh.shared.mesh_protocol import Hello, check_peer
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import TextDelta, TokenizedRequest
from radixmesh.shared.tls import ClientTLS

Reply = TypeVar("Reply")

UNARY_TIMEOUT_S = 5.0
# The detokenizer sends initial metadata once the subscriber is registered; until then a
# request's first deltas could be missed, so nothing is sent before it.
SUBSCRIBE_ACK_TIMEOUT_S = 10.0


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
            raise UnavailableError(f"scheduler stream broke: {_describe(exc)}") from exc

    async def wait_closed(self) -> None:
        """Returns never: raises once the scheduler ends or breaks the stream."""
        try:
            await self._call
        except grpc.RpcError as exc:
            raise UnavailableError(f"scheduler stream broke: {_describe(exc)}") from exc
        raise UnavailableError("the scheduler closed the request stream")

    def cancel(self) -> None:
        self._call.cancel()


class GrpcTextSubscription:
    """The detokenizer's `Subscribe` stream, as batches of TextDeltas."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call

    async def __aiter__(self) -> AsyncIterator[list[TextDelta]]:
        try:
            async for batch in self._call:
                yield [wire.text_delta_from_proto(delta) for delta in batch.deltas]
        except grpc.RpcError as exc:
            raise UnavailableError(f"detokenizer stream broke: {_describe(exc)}") from exc

    def cancel(self) -> None:
        self._call.cancel()


class GrpcMeshLink:
    def __init__(self, scheduler_address: str, detokenizer_address: str,
                 hello: Hello | None = None, tls: ClientTLS | None = None) -> None:
        self.scheduler_address = scheduler_address
        self.detokenizer_address = detokenizer_address
        self.hello = hello or Hello("tokenizer", implementation="tokenizer")
        self._greeted_detokenizer: Hello | None = None  # None: it predates the handshake
        self._scheduler_channel = open_channel(scheduler_address, tls)
        self._detokenizer_channel = open_channel(detokenizer_address, tls)
        self._scheduler = internal_pb2_grpc.SchedulerStub(self._scheduler_channel)
        self._detokenizer = internal_pb2_grpc.DetokenizerStub(self._detokenizer_channel)

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
                f"scheduler at {self.scheduler_address}: {_describe(exc)}") from exc

    async def greet(self) -> None:
        """The handshake with the scheduler and the detokenizer; HandshakeError if either
        speaks another protocol, UnavailableError if one cannot be reached."""
        await self._greet(self._scheduler.Hello, "scheduler", self.scheduler_address)
        self._greeted_detokenizer = await self._greet(self._detokenizer.Hello, "detokenizer",
                                                      self.detokenizer_address)

    async def _greet(self, rpc: Callable[..., Awaitable[internal_pb2.PeerHello]], service: str,
                     address: str) -> Hello | None:
        try:
            reply = await rpc(internal_pb2.PeerHello(**self.hello.fields()),
                              timeout=UNARY_TIMEOUT_S)
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.aio.AioRpcError) and \
                    exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                return None
            raise UnavailableError(f"{service} at {address}: {_describe(exc)}") from exc
        peer = Hello.from_message(reply)
        check_peer(self.hello, peer, address, service)
        return peer

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
                                       f"{_describe(exc)}") from exc
            yield True
            await asyncio.Event().wait()  # until the connection is torn down
        finally:
            call.cancel()
        raise UnavailableError(f"the scheduler at {self.scheduler_address} ended its health "
                               "watch")

    async def open_subscription(self) -> GrpcTextSubscription:
        where = f"detokenizer at {self.detokenizer_address}"
        peer = self._greeted_detokenizer
        call = self._detokenizer.Subscribe(
            common_pb2.Empty(), metadata=self.hello.stream_metadata(peer) if peer else None)
        try:
            await asyncio.wait_for(call.initial_metadata(), SUBSCRIBE_ACK_TIMEOUT_S)
        except (grpc.RpcError, TimeoutError) as exc:
            call.cancel()
            raise UnavailableError(f"{where} did not accept the subscription: "
                                       f"{_describe(exc)}") from exc
        if call.done():  # a failed call yields empty metadata rather than raising
            raise UnavailableError(
                f"{where} ended the subscription: {(await call.code()).name}: "
                f"{await call.details()}")
        return GrpcTextSubscription(call)

    def open_submit(self) -> GrpcSubmitStream:
        return GrpcSubmitStream(self._scheduler)

    async def close(self) -> None:
        await self._scheduler_channel.close()
        await self._detokenizer_channel.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return repr(exc)
