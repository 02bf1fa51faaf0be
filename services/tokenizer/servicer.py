"""The public gRPC `Generation` service: converts messages and calls the router, nothing more.

A client that cancels or disconnects cancels the `Generate` handler; leaving the request
stream's `async with` block then aborts the request through the mesh at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from radixmesh.services.tokenizer.metrics import FrontDoorMetrics
from radixmesh.services.tokenizer.router import MeshUnavailableError, Router
from radixmesh.shared import wire
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.requests import TextDelta

TRACEPARENT_KEY = "traceparent"


def request_body(request: generate_pb2.GenerateRequest) -> dict:
    """The RequestBuilder body of a GenerateRequest: its prompt field plus the sampling
    fields the client set."""
    body = wire.sampling_body_from_proto(request.sampling)
    which = request.WhichOneof("prompt")
    if which == "text":
        body["text"] = request.text
    elif which == "input_ids":
        body["input_ids"] = list(request.input_ids.ids)
    elif which == "messages":
        body["messages"] = [{"role": m.role, "content": m.content}
                            for m in request.messages.messages]
    return body  # no prompt at all: RequestBuilder names the missing field


def generate_response(delta: TextDelta) -> generate_pb2.GenerateResponse:
    message = generate_pb2.GenerateResponse(rid=delta.rid, token_ids=delta.token_ids,
                                            text=delta.text)
    if delta.finish is not None:
        message.finish.CopyFrom(wire.finish_to_proto(delta.finish))
    if delta.usage is not None:
        message.usage.CopyFrom(wire.usage_to_proto(delta.usage))
    return message


def traceparent_of(request: generate_pb2.GenerateRequest,
                   context: grpc.aio.ServicerContext) -> str:
    """The request's own trace context first, else the `traceparent` metadata entry."""
    if request.trace.traceparent:
        return request.trace.traceparent
    for key, value in context.invocation_metadata() or ():
        if key == TRACEPARENT_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


class GenerationServicer(generate_pb2_grpc.GenerationServicer):
    def __init__(self, router: Router, metrics: FrontDoorMetrics, served_model_name: str,
                 max_request_bytes: int) -> None:
        self._router = router
        self._metrics = metrics
        self._served_model_name = served_model_name
        self._max_request_bytes = max_request_bytes

    async def Generate(self, request: generate_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext,
                       ) -> AsyncIterator[generate_pb2.GenerateResponse]:
        if request.ByteSize() > self._max_request_bytes:
            self._metrics.on_bad_request()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"request: {request.ByteSize()} bytes exceed the limit of "
                                f"{self._max_request_bytes} bytes")
        try:
            built = self._router.build(request.rid, request_body(request))
            stream = self._router.submit(built, traceparent_of(request, context))
        except InvalidRequestError as exc:
            self._metrics.on_bad_request()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except MeshUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        async with stream:
            try:
                async for delta in stream:
                    yield generate_response(delta)
            except MeshUnavailableError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def Abort(self, request: generate_pb2.AbortRequest,
                    context: grpc.aio.ServicerContext) -> generate_pb2.AbortResponse:
        return generate_pb2.AbortResponse(found=self._router.abort(request.rid))

    async def GetModelInfo(self, request: common_pb2.Empty,
                           context: grpc.aio.ServicerContext) -> generate_pb2.ModelInfo:
        info = self._router.info
        if info is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the front door is not connected to the mesh yet")
        public = generate_pb2.ModelInfo()
        public.CopyFrom(info)
        public.model_id = self._served_model_name  # the name clients use, not a server path
        return public
