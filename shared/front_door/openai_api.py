"""The OpenAI-compatible HTTP API of the front door (aiohttp).

`/v1/completions` and `/v1/chat/completions` (JSON or SSE), `/v1/models` and
`/v1/models/{id}` (OpenAI's 404 for another id), `/health_generate` (200 once a one-token
probe came back), `/health` (200 once connected to the mesh), `/metrics` (Prometheus text),
and SGLang's native routes (`native_api.py`). Translation lives in
`openai_protocol` / `openai_responses`; this file only moves bytes. A client that goes away
mid-request cancels its handler (aiohttp's handler cancellation is on), which leaves the
request stream's `async with` block and aborts the request through the mesh.

Bodies are read within `--http-body-timeout` (408 past it) and decoded by
`http_limits.parse_json_body`: too deep, malformed or holding text that is not UTF-8, they get
a 400 naming the body or the field, before any object reaches the router.

Every route but `/health` and `/metrics` needs one of the configured API keys (401 with
OpenAI's body otherwise); a request belongs to the key that started it (`shared/api_keys.py`).
Past `--max-queued-requests` live requests a generating route answers 429 before reading the
body. A non-streaming request that ends aborted answers an error, never 200
(`finish_status.py`: 499 when its owner aborted it, the refusal's status otherwise), and
every error, a bug's 500 included, has OpenAI's body.

Each generating route's request is one root span (`request_span.py`), opened and ended by the
outermost middleware so that it sees every outcome, error responses included; a sampled one
answers with an `X-Trace-Id` header, added as any response's headers go out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from aiohttp import web

from radixmesh.shared.api_keys import NO_KEYS, ApiKeys, AuthenticationError, presented_key
from radixmesh.shared.errors import InvalidRequestError, RadixMeshError, UnavailableError
from radixmesh.shared.front_door import openai_responses as responses
from radixmesh.shared.front_door.admission import check_admission
from radixmesh.shared.front_door.core import FrontDoorCore
from radixmesh.shared.front_door.flags import FrontDoorFlags
from radixmesh.shared.front_door.http_common import (
    OWNER,
    REQUEST_SPAN,
    STREAMING,
    HttpError,
    error_param,
    raise_finish_error,
    read_json,
    stream_events,
    unrefused,
)
from radixmesh.shared.front_door.live_request import RequestStream
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.native_api import NativeApi
from radixmesh.shared.front_door.openai_protocol import (
    OpenAIRequest,
    UnknownModelError,
    parse_chat_request,
    parse_completion_request,
)
from radixmesh.shared.front_door.openai_responses import (
    ChatFormat,
    CompletionFormat,
    ResponseFormat,
)
from radixmesh.shared.front_door.request_span import (
    CHAT,
    TEXT_COMPLETION,
    TRACE_ID_HEADER,
    RequestSpan,
    RequestSpans,
)
from radixmesh.shared.span_recorder import DISABLED, SpanRecorder
from radixmesh.shared.trace_context import TraceContext

__all__ = ["REQUEST_SPAN", "HttpError", "OpenAIApi"]

logger = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_PROBE_TOKEN = 1  # any id of the vocabulary: the probe's prompt is one token
HEALTH_GENERATE_TIMEOUT_S = 20.0
# The POST routes that generate, by gen_ai.operation.name: each request is a root span. A new
# generating route must be listed here (its handler reads the span `_traced` opened).
GENERATING_ROUTES = {"/v1/completions": TEXT_COMPLETION, "/v1/chat/completions": CHAT,
                     "/generate": TEXT_COMPLETION}
# Served to anyone (design §11): probes and scrapers carry no key.
OPEN_PATHS = frozenset({"/health", "/metrics"})


class OpenAIApi:
    def __init__(self, router: FrontDoorCore, metrics: FrontDoorMetrics,
                 config: FrontDoorFlags, recorder: SpanRecorder = DISABLED,
                 api_keys: ApiKeys = NO_KEYS,
                 server_info: Callable[[], Awaitable[dict]] | None = None) -> None:
        """`server_info`: the server info document, where the core adds to the front door's
        own (the router: its nodes); default `native_api.server_info`."""
        self.router = router
        self._server_info = server_info
        self.api_keys = api_keys
        self.metrics = metrics
        self.config = config
        self.model = config.served_model_name
        self.started = int(time.time())
        self.spans = RequestSpans(recorder, self.model)

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_request_bytes,
                              middlewares=[self._traced, self._errors_and_auth])
        app.on_response_prepare.append(_send_trace_id)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model:.+}", self.retrieve_model)
        app.router.add_get("/health", self.health)
        app.router.add_get("/health_generate", self.health_generate)
        app.router.add_get("/metrics", self.prometheus)
        NativeApi(self.router, self.config, self.metrics, self._server_info).add_routes(app)
        return app

    # ---- endpoints -------------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        self._admit()
        parsed = parse_completion_request(await self._read_json(request), self.model,
                                          self.config.sampling_limits)
        return await self._generate(request, parsed, CompletionFormat())

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        self._admit()
        parsed = parse_chat_request(await self._read_json(request), self.model,
                                    self.config.sampling_limits)
        return await self._generate(request, parsed, ChatFormat())

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(responses.models_list(self.model, self.started,
                                                       self._context_len()))

    async def retrieve_model(self, request: web.Request) -> web.Response:
        """One model by id; OpenAI's 404 for any other, so `models.retrieve` raises
        NotFoundError."""
        name = request.match_info["model"]
        if name != self.model:
            raise HttpError.of(UnknownModelError(name, self.model), param="model")
        return web.json_response(responses.model_card(self.model, self.started,
                                                      self._context_len()))

    def _admit(self) -> None:
        """Sheds a new request past --max-queued-requests, before its body is read."""
        check_admission(self.router.num_live, self.config.max_queued_requests)

    def _context_len(self) -> int:
        return self.router.info.context_len if self.router.info is not None else 0

    async def health(self, request: web.Request) -> web.Response:
        if not self.router.ready:
            return web.Response(status=503, text="not connected to the mesh\n")
        return web.Response(text="ok\n")

    async def health_generate(self, request: web.Request) -> web.Response:
        """200 once one real token came out of the mesh for a one-token request (as SGLang's
        /health_generate): readiness says the links are up, this that they work end to end."""
        if not self.router.ready:
            return web.Response(status=503, text="not connected to the mesh\n")
        probe = {"input_ids": [HEALTH_PROBE_TOKEN], "max_new_tokens": 1, "ignore_eos": True}
        try:
            stream = self.router.submit(self.router.build(None, probe))
            async with asyncio.timeout(HEALTH_GENERATE_TIMEOUT_S):
                tokens = [token async for delta in stream for token in delta.token_ids]
        except TimeoutError:
            return web.Response(status=503, text="no token within "
                                f"{HEALTH_GENERATE_TIMEOUT_S:.0f}s\n")
        except UnavailableError as error:
            return web.Response(status=503, text=f"{error}\n")
        if len(tokens) != 1:
            return web.Response(status=503, text="the mesh ended the probe without a token\n")
        return web.Response(text="ok\n")

    async def prometheus(self, request: web.Request) -> web.Response:
        try:
            self.metrics.set_load(await self.router.get_load())
        except UnavailableError:
            pass  # the scheduler's gauges keep their last values; ours are still worth serving
        return web.Response(body=self.metrics.render(),
                            headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    # ---- the shared generation path --------------------------------------------------------

    async def _generate(self, request: web.Request, parsed: OpenAIRequest,
                        fmt: ResponseFormat) -> web.StreamResponse:
        span = request[REQUEST_SPAN]  # opened by `_traced` for every generating route
        try:
            built = span.tokenize(self.router.build, parsed.rid, parsed.body)
        except InvalidRequestError as exc:  # blame the OpenAI parameter the client sent
            raise HttpError.blamed(exc, parsed.param_name(exc.field)) from exc
        stream = self.router.submit(built, request[OWNER])
        span.follow(stream)
        ids = (fmt.id_prefix + built.rid, int(time.time()), self.model)
        async with stream:
            if parsed.stream:
                return await self._stream(request, stream, fmt, ids, parsed.include_usage, span)
            done = await stream.collect()
        raise_finish_error(done.finish, parsed.param_name)
        return web.json_response(fmt.response(*ids, done))

    async def _stream(self, request: web.Request, stream: RequestStream, fmt: ResponseFormat,
                      ids: tuple[str, int, str], include_usage: bool,
                      span: RequestSpan) -> web.StreamResponse:
        async def events() -> AsyncGenerator[dict, None]:
            for event in fmt.opening(*ids):
                yield event
            async for delta in unrefused(stream):
                for event in fmt.chunks(*ids, delta):
                    yield event
                if delta.finish is not None and include_usage:
                    yield responses.usage_chunk(fmt.chunk_object, *ids, delta.usage)
        return await stream_events(request, span, events())

    async def _read_json(self, request: web.Request) -> object:
        return await read_json(request, self.config)

    @web.middleware
    async def _traced(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The root span of a generating request, around everything else (errors included).
        Tracing off, the span object only carries the incoming context on."""
        operation = GENERATING_ROUTES.get(request.path) if request.method == "POST" else None
        if operation is None:
            return await handler(request)
        span = self.spans.open(f"POST {request.path}", operation,
                               TraceContext.from_carrier(request.headers.get))
        request[REQUEST_SPAN] = span
        try:
            response = await handler(request)
            span.responded(response.status)
            return response
        except BaseException as exc:  # a client disconnect cancels the handler
            span.fail(exc)
            raise
        finally:
            span.end()

    @web.middleware
    async def _errors_and_auth(self, request: web.Request,
                               handler: Handler) -> web.StreamResponse:
        try:
            self._check_auth(request)
            return await handler(request)
        except HttpError as exc:
            _fail_span(request, exc)
            if exc.status in (400, 408, 413):
                self.metrics.on_bad_request()
            response = exc.response()
            if exc.status in (408, 413):  # the rest of the body is not worth reading
                response.force_close()
            return response
        except RadixMeshError as exc:
            _fail_span(request, exc)
            param = error_param(exc)
            if param is not None:
                self.metrics.on_bad_request()
            return HttpError.of(exc, param=param).response()
        except web.HTTPException as exc:  # aiohttp's own 404, 405, ...: OpenAI-shaped too
            if exc.status < 400:
                raise
            return HttpError(exc.status, exc.reason, None).response()
        except Exception as exc:  # a bug: still a 500 with OpenAI's body, and the trace logged
            if request.get(STREAMING):
                raise  # the headers are out: aiohttp closes the connection
            logger.exception("%s %s failed", request.method, request.path)
            _fail_span(request, exc)
            return HttpError(500, "internal server error; the server's log has the details",
                             None, "internal_error").response()

    def _check_auth(self, request: web.Request) -> None:
        """Every route but the open ones needs a configured key; the request's owner (the
        key's digest, None without keys) is kept for the handlers."""
        if request.path in OPEN_PATHS:
            request[OWNER] = None
            return
        try:
            request[OWNER] = self.api_keys.authenticate(presented_key(request.headers.get))
        except AuthenticationError as exc:
            raise HttpError(401, str(exc), None, exc.openai_type,
                            headers={"WWW-Authenticate": "Bearer"}) from exc


def _fail_span(request: web.Request, error: BaseException) -> None:
    """Records the error that becomes an error response on the request's span, if it has one."""
    span = request.get(REQUEST_SPAN)
    if span is not None:
        span.fail(error)


async def _send_trace_id(request: web.Request, response: web.StreamResponse) -> None:
    """Hands a sampled request's trace id back as its response's headers go out: streamed,
    whole or error responses alike."""
    span = request.get(REQUEST_SPAN)
    if span is not None and span.trace_id:
        response.headers[TRACE_ID_HEADER] = span.trace_id
