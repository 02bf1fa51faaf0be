"""The front door's gRPC link to the detokenizer: the handshake and the `Subscribe` stream.

A front door holds one subscription whatever its number of data-parallel replicas
(`text_feed.py`). Every RPC failure is raised as UnavailableError; a detokenizer of another
protocol is refused with a HandshakeError, one that predates the handshake is taken as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from radixmesh.shared import wire
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.grpc_service import open_channel
from radixmesh.shared.mesh_protocol import Hello, check_peer
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import TextDelta
from radixmesh.shared.tls import ClientTLS

UNARY_TIMEOUT_S = 5.0
# The detokenizer sends initial metadata once the subscriber is registered; until then a
# request's first deltas could be missed, so nothing is sent before it.
SUBSCRIBE_ACK_TIMEOUT_S = 10.0


class GrpcTextSubscription:
    """The detokenizer's `Subscribe` stream, as batches of TextDeltas."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self._call = call

    async def __aiter__(self) -> AsyncIterator[list[TextDelta]]:
        try:
            async for batch in self._call:
                yield wire.text_batch_from_proto(batch)
        except grpc.RpcError as exc:
            raise UnavailableError(f"detokenizer stream broke: {describe(exc)}") from exc

    def cancel(self) -> None:
        self._call.cancel()


class GrpcDetokenizerLink:
    def __init__(self, address: str, hello: Hello | None = None,
                 tls: ClientTLS | None = None) -> None:
        self.detokenizer_address = address
        self.hello = hello or Hello("tokenizer", implementation="tokenizer")
        self._greeted: Hello | None = None  # None: it predates the handshake
        self._channel = open_channel(address, tls)
        self._stub = internal_pb2_grpc.DetokenizerStub(self._channel)

    async def greet_detokenizer(self) -> None:
        """HandshakeError if the detokenizer speaks another protocol, UnavailableError if it
        cannot be reached."""
        self._greeted = await greet(self.hello, self._stub.Hello, "detokenizer",
                                    self.detokenizer_address)

    async def open_subscription(self) -> GrpcTextSubscription:
        where = f"detokenizer at {self.detokenizer_address}"
        peer = self._greeted
        call = self._stub.Subscribe(
            common_pb2.Empty(), metadata=self.hello.stream_metadata(peer) if peer else None)
        try:
            await asyncio.wait_for(call.initial_metadata(), SUBSCRIBE_ACK_TIMEOUT_S)
        except (grpc.RpcError, TimeoutError) as exc:
            call.cancel()
            raise UnavailableError(f"{where} did not accept the subscription: "
                                   f"{describe(exc)}") from exc
        if call.done():  # a failed call yields empty metadata rather than raising
            raise UnavailableError(
                f"{where} ended the subscription: {(await call.code()).name}: "
                f"{await call.details()}")
        return GrpcTextSubscription(call)

    async def close(self) -> None:
        await self._channel.close()


async def greet(hello: Hello, rpc: Callable[..., Awaitable[internal_pb2.PeerHello]],
                service: str, address: str) -> Hello | None:
    """One side of the handshake: the peer's hello, None for a peer without the RPC."""
    try:
        reply = await rpc(internal_pb2.PeerHello(**hello.fields()), timeout=UNARY_TIMEOUT_S)
    except grpc.RpcError as exc:
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() is grpc.StatusCode.UNIMPLEMENTED:
            return None
        raise UnavailableError(f"{service} at {address}: {describe(exc)}") from exc
    peer = Hello.from_message(reply)
    check_peer(hello, peer, address, service)
    return peer


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return repr(exc)
