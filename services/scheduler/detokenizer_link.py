"""The scheduler's link to the detokenizer: handshake, then one Tokens stream at a time.

`publish` never raises: while no stream is open a batch is dropped, which loses nothing,
because the supervisor ends every request as soon as the stream is lost (nobody could read
their output) and refuses new ones until a stream is open again. A write that does not
complete within PUBLISH_TIMEOUT_S (a stopped detokenizer stops reading) abandons the stream.
Everything gRPC about the detokenizer stays in this file.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.services.scheduler.supervisor import PeerNotReadyError
from radixmesh.shared import wire
from radixmesh.shared.grpc_service import SERVING, open_channel
from radixmesh.shared.mesh_protocol import STREAM_ACK, HandshakeError, Hello, check_peer
from radixmesh.shared.protos_gen import internal_pb2, internal_pb2_grpc
from radixmesh.shared.tls import ClientTLS
from radixmesh.shared.token_batch import TokenBatch

logger = logging.getLogger(__name__)
CALL_TIMEOUT_S = 5.0
PUBLISH_TIMEOUT_S = 10.0


class DetokenizerLink:
    def __init__(self, address: str, hello: Hello, tls: ClientTLS | None = None) -> None:
        self.address = address
        self.hello = hello
        self.num_dropped = 0  # batches published while no stream was open
        self._channel = open_channel(address, tls)
        self._stub = internal_pb2_grpc.DetokenizerStub(self._channel)
        self._call: grpc.aio.StreamUnaryCall | None = None
        self._closed = asyncio.Event()  # set when `_call` is abandoned from this side
        self._why_closed = "no Tokens stream is open"

    async def connect(self) -> Hello:
        """One attempt: SERVING, the hello, a Tokens stream the detokenizer acknowledged.
        Raises PeerNotReadyError (try again soon) or HandshakeError (refused)."""
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0)
            if reply.status != SERVING:
                raise PeerNotReadyError("not SERVING yet")
            peer = Hello.from_message(await self._stub.Hello(
                internal_pb2.PeerHello(**self.hello.fields()), timeout=CALL_TIMEOUT_S))
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                raise HandshakeError(f"the service at {self.address} answers no mesh hello: "
                                     "refused") from None
            raise PeerNotReadyError(f"{error.code().name}: {error.details()}") from None
        check_peer(self.hello, peer, self.address, "detokenizer", required=(STREAM_ACK,))
        call = self._stub.Tokens(metadata=self.hello.stream_metadata(peer))
        try:
            await asyncio.wait_for(call.initial_metadata(), CALL_TIMEOUT_S)
        except TimeoutError:
            call.cancel()
            raise PeerNotReadyError("the Tokens stream was not acknowledged in time") from None
        if call.done():
            raise PeerNotReadyError(f"the Tokens stream was refused: {await call.details()}")
        self._call = call
        self._closed.clear()
        return peer

    async def ended(self) -> str:
        """Waits until the open stream ends or is abandoned here; returns why."""
        call = self._call
        if call is None:
            return self._why_closed
        code = asyncio.ensure_future(call.code())
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait([code, closed], return_when=asyncio.FIRST_COMPLETED)
        finally:
            code.cancel()
            closed.cancel()
        if self._closed.is_set():
            return self._why_closed
        return f"the detokenizer at {self.address}: Tokens stream ended ({code.result().name})"

    async def publish(self, batch: TokenBatch) -> None:
        call = self._call
        if call is None:
            self.num_dropped += 1
            return
        try:
            await asyncio.wait_for(call.write(wire.token_batch_to_proto(batch)),
                                   PUBLISH_TIMEOUT_S)
        except TimeoutError:
            self.close(f"the detokenizer at {self.address} took no batch for "
                       f"{PUBLISH_TIMEOUT_S:.0f}s")
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            detail = (f"{error.code().name}: {error.details()}"
                      if isinstance(error, grpc.aio.AioRpcError) else repr(error))
            self.close(f"the detokenizer at {self.address}: Tokens stream failed: {detail}")

    def close(self, reason: str = "the Tokens stream was closed") -> None:
        """Abandons the open stream, if any; later batches are dropped until `connect`."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self._why_closed = reason
            self._closed.set()

    async def aclose(self) -> None:
        self.close()
        await self._channel.close()
