"""The public gRPC `Generation` service: converts messages and calls the router, nothing more.

Each `Generate` is one root span (`request_span.py`); a sampled one returns its trace id in
the `x-trace-id` trailing metadata, on success and error alike.

A client that cancels or disconnects cancels the `Generate` handler; leaving the request
stream's `async with` block then aborts the request through the mesh at once.

Bytes that do not decode (text that is not UTF-8, a broken wire format) and fields this API
version does not declare never reach a method: `grpc_decoding.py` turns them into
INVALID_ARGUMENT naming the field (`refuse`). The request id and the list limits (the front
door's flags) are checked here, and at most `max_streams` Generate calls run at once, and at
most `--max-queued-requests` requests live at the front door: one more gets
RESOURCE_EXHAUSTED at once rather than a place in an unbounded queue. A request refused inside
the mesh (a finish carrying a status code) ends with that status, not with a finish message;
one its owner aborted ends with its "abort" finish.

Every method first checks the caller's API key (`shared/api_keys.py`: UNAUTHENTICATED without
a configured one); a request belongs to the key that started it, and `Abort` by another key
is refused with PERMISSION_DENIED while the request runs on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from radixmesh.shared import wire
from radixmesh.shared.api_keys import (
    NO_KEYS,
    ApiKeys,
    AuthenticationError,
    Owner,
    PermissionDeniedError,
)
from radixmesh.shared.errors import (
    CapacityError,
    InvalidRequestError,
    RadixMeshError,
    UnavailableError,
)
from radixmesh.shared.front_door.admission import check_admission
from radixmesh.shared.front_door.core import FrontDoorCore
from radixmesh.shared.front_door.finish_status import refusal
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.request_builder import RequestBody, select_prompt_field
from radixmesh.shared.front_door.request_span import (
    GENERATE,
    TEXT_COMPLETION,
    TRACE_ID_TRAILER,
    RequestSpan,
    RequestSpans,
)
from radixmesh.shared.grpc_service import abort_with
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.requests import TextDelta
from radixmesh.shared.sampling_params import DEFAULT_LIMITS, SamplingLimits, check_stop_lists
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.text_checks import check_rid
from radixmesh.shared.trace_context import TraceContext

DEFAULT_MAX_STREAMS = 1024
GENERATION = generate_pb2.DESCRIPTOR.services_by_name["Generation"]  # what servers register


def request_body(request: generate_pb2.GenerateRequest,
                 limits: SamplingLimits = DEFAULT_LIMITS) -> RequestBody:
    """A GenerateRequest's prompt and the sampling fields the client set, decoded once, with
    no dict in between; RequestBuilder validates them as it does an HTTP body. The request id
    (when given) and the list limits are checked here, as the HTTP door checks them."""
    if request.rid:
        check_rid(request.rid)
    check_stop_lists(request.sampling.stop, request.sampling.stop_token_ids, limits)
    which = request.WhichOneof("prompt")
    prompt_field = select_prompt_field((which,) if which else ())  # none: names "prompt"
    prompt: object = request.text
    if which == "input_ids":
        prompt = list(request.input_ids.ids)
    elif which == "messages":
        prompt = [{"role": m.role, "content": m.content} for m in request.messages.messages]
    return RequestBody(prompt_field, prompt, wire.sampling_from_proto(request.sampling),
                       max_new_tokens_given=request.sampling.HasField("max_new_tokens"),
                       cache_salt=request.cache_salt if request.HasField("cache_salt") else None)


def generate_response(delta: TextDelta) -> generate_pb2.GenerateResponse:
    message = generate_pb2.GenerateResponse(rid=delta.rid, token_ids=delta.token_ids,
                                            text=delta.text)
    if delta.finish is not None:
        message.finish.CopyFrom(wire.finish_to_proto(delta.finish))
    if delta.usage is not None:
        message.usage.CopyFrom(wire.usage_to_proto(delta.usage))
    return message


def trace_of(request: generate_pb2.GenerateRequest,
             context: grpc.aio.ServicerContext) -> TraceContext:
    """The request's own trace context first, else the `traceparent`/`tracestate` metadata."""
    if request.trace.traceparent:
        return TraceContext.parse(request.trace.traceparent, request.trace.tracestate)
    metadata = {key: value for key, value in context.invocation_metadata() or ()
                if isinstance(value, str)}  # binary (-bin) entries cannot hold a context
    return TraceContext.from_carrier(metadata.get)


class GenerationServicer(generate_pb2_grpc.GenerationServicer):
    def __init__(self, router: FrontDoorCore, metrics: FrontDoorMetrics, served_model_name: str,
                 max_request_bytes: int, recorder: SpanRecorder = DISABLED,
                 limits: SamplingLimits = DEFAULT_LIMITS,
                 max_streams: int = DEFAULT_MAX_STREAMS,
                 api_keys: ApiKeys = NO_KEYS,
                 max_queued_requests: int | None = None,
                 server_info: Callable[[], Awaitable[dict]] | None = None) -> None:
        """`server_info`: SGLang's server info document (native_api.server_info)."""
        self._router = router
        self._server_info = server_info
        self._api_keys = api_keys
        self._metrics = metrics
        self._served_model_name = served_model_name
        self._max_request_bytes = max_request_bytes
        self._spans = RequestSpans(recorder, served_model_name)
        self._limits = limits
        self._max_streams = max_streams
        self._max_queued_requests = max_queued_requests
        self._num_streams = 0

    async def Generate(self, request: generate_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext,
                       ) -> AsyncIterator[generate_pb2.GenerateResponse]:
        owner = await self._authenticate(context)
        if self._num_streams >= self._max_streams:
            await abort_with(context, CapacityError(
                f"{self._num_streams} Generate streams are running, the most this server "
                "takes (--max-concurrent-streams); retry later"))
        span = self._spans.open(GENERATE, TEXT_COMPLETION, trace_of(request, context))
        if span.trace_id:  # set first: trailers go out with an abort too
            context.set_trailing_metadata(((TRACE_ID_TRAILER, span.trace_id),))
        self._num_streams += 1  # given back in `finally`, however the stream ends
        try:
            async for response in self._generate(request, context, span, owner):
                yield response
        except BaseException as exc:  # recorded, then re-raised as it was
            span.fail(exc)
            raise
        finally:
            self._num_streams -= 1
            span.end()

    async def _generate(self, request: generate_pb2.GenerateRequest,
                        context: grpc.aio.ServicerContext, span: RequestSpan,
                        owner: Owner) -> AsyncIterator[generate_pb2.GenerateResponse]:
        try:
            check_admission(self._router.num_live, self._max_queued_requests)
            if request.ByteSize() > self._max_request_bytes:
                raise InvalidRequestError("request", f"{request.ByteSize()} bytes exceed the "
                                          f"limit of {self._max_request_bytes} bytes")
            built = span.tokenize(self._router.build, request.rid,
                                  request_body(request, self._limits))
            stream = self._router.submit(built, owner)
        except RadixMeshError as exc:
            if isinstance(exc, InvalidRequestError):
                self._metrics.on_bad_request()
            span.fail(exc)
            await abort_with(context, exc)
        span.follow(stream)
        async with stream:
            try:
                async for delta in stream:
                    error = refusal(delta.finish)
                    if error is not None:  # refused inside the mesh: its status, not a finish
                        raise error
                    yield generate_response(delta)
            except RadixMeshError as exc:  # refused, or the mesh went away mid-stream
                span.fail(exc)
                await abort_with(context, exc)

    async def Abort(self, request: generate_pb2.AbortRequest,
                    context: grpc.aio.ServicerContext) -> generate_pb2.AbortResponse:
        caller = await self._authenticate(context)
        try:
            check_rid(request.rid)
            found = self._router.abort_as(caller, request.rid)
        except (InvalidRequestError, PermissionDeniedError) as exc:  # another key's: runs on
            await abort_with(context, exc)
        return generate_pb2.AbortResponse(found=found)

    async def GetModelInfo(self, request: common_pb2.Empty,
                           context: grpc.aio.ServicerContext) -> generate_pb2.ModelInfo:
        await self._authenticate(context)
        info = self._router.info
        if info is None:
            await abort_with(context,
                             UnavailableError("the front door is not connected to the mesh yet"))
        # The name clients use, not a server path.
        return wire.model_info_to_proto(dataclasses.replace(info, model_id=self._served_model_name))

    async def GetServerInfo(self, request: common_pb2.Empty,
                            context: grpc.aio.ServicerContext) -> generate_pb2.ServerInfo:
        await self._authenticate(context)
        if self._server_info is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "no server info here")
        try:
            document = await self._server_info()
        except RadixMeshError as exc:
            await abort_with(context, exc)
        return generate_pb2.ServerInfo(json=json.dumps(document))

    async def FlushCache(self, request: common_pb2.Empty,
                         context: grpc.aio.ServicerContext) -> generate_pb2.FlushCacheResponse:
        """As POST /flush_cache: refused (flushed false, with why) while requests are live."""
        await self._authenticate(context)
        try:
            outcome = await self._router.flush_cache()
        except RadixMeshError as exc:
            await abort_with(context, exc)
        return generate_pb2.FlushCacheResponse(flushed=outcome.flushed, message=outcome.message,
                                               freed_pages=outcome.freed_pages)

    async def refuse(self, context: grpc.aio.ServicerContext,
                     error: InvalidRequestError) -> None:
        """Ends a call whose request could not be decoded (`grpc_decoding.py`): INVALID_ARGUMENT
        naming the field, once the caller's key is checked like any call's."""
        await self._authenticate(context)
        self._metrics.on_bad_request()
        await abort_with(context, error)

    async def _authenticate(self, context: grpc.aio.ServicerContext) -> Owner:
        """The caller's owner digest; ends the call UNAUTHENTICATED without a configured key.
        Every method of the service calls this first (health and reflection are other
        services, and stay open)."""
        try:
            return self._api_keys.authenticate_grpc(context)
        except AuthenticationError as exc:
            await abort_with(context, exc)
