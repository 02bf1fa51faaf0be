"""The scheduler's link to the worker: handshake, info, and the Execute stream with its
watchdog.

`WorkerLink.connect` makes one attempt: the worker must report SERVING, answer the hello as a
worker of our protocol and model, and acknowledge the Execute stream opened for the instance
it greeted. The stream (`WorkerStream`) raises WorkerLostError when it breaks, ends, or when
a step's result has not come back `step_timeout` seconds after its plan was sent (a hung
worker: the stopped process is caught by keepalive too, a stuck step only by this).
Everything gRPC about the worker stays in this file.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radixmesh.services.scheduler.loop import WorkerLostError
from radixmesh.services.scheduler.supervisor import PeerNotReadyError
from radixmesh.shared import wire
from radixmesh.shared.grpc_service import SERVING, open_channel
from radixmesh.shared.mesh_protocol import STREAM_ACK, HandshakeError, Hello, check_peer
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.step import StepPlan, StepResult, WorkerInfo
from radixmesh.shared.tls import ClientTLS

CALL_TIMEOUT_S = 5.0
# The worker acknowledges a stream once the previous one released its state (about
# STREAM_HANDOVER_S on the worker, 1 s, when the old one has yet to notice its end).
ACK_TIMEOUT_S = 10.0
# The least a read is given, however overdue its step: the loop may come to read late (a slow
# publish), and a result already buffered must not be taken for a hang.
MIN_READ_S = 1.0


@dataclass
class WorkerSession:
    """One accepted worker: what it said, and its open Execute stream."""

    hello: Hello
    info: WorkerInfo
    stream: WorkerStream


class WorkerLink:
    def __init__(self, address: str, hello: Hello, step_timeout: float,
                 tls: ClientTLS | None = None) -> None:
        self.address = address
        self.hello = hello
        self.step_timeout = step_timeout
        self._channel = open_channel(address, tls)
        self._stub = internal_pb2_grpc.WorkerStub(self._channel)

    async def connect(self, expected_model: str | None) -> WorkerSession:
        """One attempt. Raises PeerNotReadyError (try again soon) or HandshakeError (this
        worker cannot be used: another protocol, model or service)."""
        await self._check_serving()
        try:
            peer = Hello.from_message(await self._stub.Hello(
                internal_pb2.PeerHello(**self.hello.fields()), timeout=CALL_TIMEOUT_S))
            check_peer(self.hello, peer, self.address, "worker", expected_model, (STREAM_ACK,))
            info = wire.worker_info_from_proto(
                await self._stub.GetInfo(common_pb2.Empty(), timeout=CALL_TIMEOUT_S))
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                raise HandshakeError(f"the service at {self.address} answers no mesh hello "
                                     f"(protocol {self.hello.protocol_version} expected): "
                                     "refused") from None
            raise PeerNotReadyError(_describe(error)) from None
        call = self._stub.Execute(metadata=self.hello.stream_metadata(peer))
        await _wait_for_ack(call, self.address)
        return WorkerSession(peer, info, WorkerStream(call, self.address, self.step_timeout))

    async def close(self) -> None:
        await self._channel.close()

    async def _check_serving(self) -> None:
        try:
            reply = await health_pb2_grpc.HealthStub(self._channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.aio.AioRpcError as error:
            raise PeerNotReadyError(_describe(error)) from None
        if reply.status != SERVING:
            raise PeerNotReadyError("not SERVING yet")


async def _wait_for_ack(call: grpc.aio.StreamStreamCall, address: str) -> None:
    """Until the worker takes the stream over (its initial metadata), or why it did not."""
    try:
        await asyncio.wait_for(call.initial_metadata(), ACK_TIMEOUT_S)
    except TimeoutError:
        call.cancel()
        raise PeerNotReadyError("the Execute stream was not acknowledged in time") from None
    if call.done():  # refused: a failed call yields empty metadata rather than raising
        code, details = await call.code(), await call.details()
        if code is grpc.StatusCode.FAILED_PRECONDITION:
            raise PeerNotReadyError(f"the worker at {address} refused the stream: {details}")
        raise PeerNotReadyError(f"the Execute stream ended at once: {code.name} {details}")


class WorkerStream:
    """The Execute stream as the loop's SendPlan / ReceiveResult callables."""

    def __init__(self, call: grpc.aio.StreamStreamCall, address: str,
                 step_timeout: float) -> None:
        self._call = call
        self.address = address
        self.step_timeout = step_timeout
        self._sent: deque[tuple[int, float]] = deque()  # (step id, when sent), oldest first

    async def send(self, plan: StepPlan) -> None:
        self._sent.append((plan.step_id, time.monotonic()))
        try:
            await self._call.write(wire.plan_to_proto(plan))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            raise WorkerLostError(f"the worker at {self.address}: Execute stream failed: "
                                  f"{_describe(error)}") from None

    async def receive(self) -> StepResult:
        """The oldest step's result; WorkerLostError if it is not back `step_timeout` seconds
        after its plan was sent."""
        step_id, sent_at = self._sent[0]
        left = sent_at + self.step_timeout - time.monotonic()
        try:
            message = await asyncio.wait_for(self._call.read(), max(left, MIN_READ_S))
        except TimeoutError:  # the supervisor abandons the stream, with this reason
            raise WorkerLostError(
                f"the worker at {self.address} is hung: no result for step {step_id} within "
                f"--worker-step-timeout {self.step_timeout:g}s") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as error:
            raise WorkerLostError(f"the worker at {self.address}: Execute stream failed: "
                                  f"{_describe(error)}") from None
        if message is grpc.aio.EOF:
            raise WorkerLostError(f"the worker at {self.address} closed the Execute stream")
        self._sent.popleft()
        return wire.result_from_proto(message)

    async def ended(self) -> str:
        """Waits until the stream ends (the worker died, or keepalive found it stopped),
        however idle the loop is; returns how."""
        code = await self._call.code()
        return f"the worker at {self.address}: Execute stream ended ({code.name})"

    def close(self) -> None:
        """Abandons the stream; the worker releases what it held when it notices."""
        self._call.cancel()


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return repr(error) if not str(error) else str(error)
