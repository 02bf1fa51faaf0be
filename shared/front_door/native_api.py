"""SGLang's native HTTP routes, beside the OpenAI ones, where users script against them.

- `POST /generate`: text or input_ids, `sampling_params`, `stream` (`native_protocol.py`).
- `GET /get_model_info`: the served model (`model_path` is the name clients use, not a path
  on the server) and its limits.
- `GET /get_server_info`: the front door's flags (secrets left out), the model and the
  scheduler's load (SGLang's `internal_states`).
- `GET|POST /flush_cache`: empties the mesh's prefix cache; 400 while requests are live, as
  SGLang answers. `POST /abort_request` `{"rid"}`: aborts one's own request (403 for another
  key's).
All of them need an API key where keys are configured (the OpenAI API's middleware checks).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

from aiohttp import web

from radixmesh.shared.completion import TextCompletion
from radixmesh.shared.errors import InvalidRequestError, UnavailableError
from radixmesh.shared.front_door.admission import check_admission
from radixmesh.shared.front_door.core import FrontDoorCore
from radixmesh.shared.front_door.flags import FrontDoorFlags
from radixmesh.shared.front_door.http_common import (
    OWNER,
    REQUEST_SPAN,
    HttpError,
    raise_finish_error,
    read_json,
    stream_events,
    unrefused,
)
from radixmesh.shared.front_door.live_request import RequestStream
from radixmesh.shared.front_door.metrics import FrontDoorMetrics
from radixmesh.shared.front_door.native_models import AbortRequestBody
from radixmesh.shared.front_door.native_protocol import generate_answer, parse_generate_request
from radixmesh.shared.front_door.request_span import RequestSpan
from radixmesh.shared.front_door.validation_errors import validate_body
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.text_checks import check_rid

CACHE_FLUSHED = "Cache flushed.\n"

# The installed distribution's version (services do not import the CLI package for it).
_VERSION = importlib.metadata.version("radixmesh")


class NativeApi:
    def __init__(self, router: FrontDoorCore, config: FrontDoorFlags,
                 metrics: FrontDoorMetrics,
                 info_document: Callable[[], Awaitable[dict]] | None = None) -> None:
        self.router = router
        self._info_document = info_document or (lambda: server_info(router, config))
        self.config = config
        self.metrics = metrics
        self.model = config.served_model_name

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/generate", self.generate)
        app.router.add_get("/get_model_info", self.get_model_info)
        app.router.add_get("/get_server_info", self.get_server_info)
        app.router.add_get("/flush_cache", self.flush_cache)
        app.router.add_post("/flush_cache", self.flush_cache)
        app.router.add_post("/abort_request", self.abort_request)

    # ---- /generate -------------------------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        # Shed past --max-queued-requests before reading the body.
        check_admission(self.router.num_live, self.config.max_queued_requests)
        parsed = parse_generate_request(await read_json(request, self.config),
                                        self.config.sampling_limits)
        span = request[REQUEST_SPAN]  # opened by the API's `_traced` middleware
        try:
            built = span.tokenize(self.router.build, parsed.rid, parsed.body)
        except InvalidRequestError as exc:  # blame the name the client used
            raise HttpError.blamed(exc, parsed.param_name(exc.field)) from exc
        started = time.perf_counter()
        stream = self.router.submit(built, request[OWNER])
        span.follow(stream)
        async with stream:
            if parsed.stream:
                return await self._stream(request, stream, started, span)
            done = await stream.collect()
        raise_finish_error(done.finish, parsed.param_name)
        return web.json_response(_answer(done, stream, started))

    async def _stream(self, request: web.Request, stream: RequestStream, started: float,
                      span: RequestSpan) -> web.StreamResponse:
        async def events() -> AsyncGenerator[dict, None]:
            so_far = TextCompletion(stream.rid)
            async for delta in unrefused(stream):
                so_far.add(delta)
                if delta.text or delta.token_ids or delta.finish is not None:
                    yield _answer(so_far, stream, started)
        return await stream_events(request, span, events())

    # ---- the others ------------------------------------------------------------------------

    async def get_model_info(self, request: web.Request) -> web.Response:
        info = self._info()
        return web.json_response({
            "model_path": self.model, "tokenizer_path": self.model, "is_generation": True,
            "served_model_name": self.model, "context_len": info.context_len,
            "vocab_size": info.vocab_size, "eos_token_ids": list(info.eos_token_ids),
            "max_total_tokens": info.max_total_tokens, "page_size": info.page_size,
            "worker": info.worker})

    async def get_server_info(self, request: web.Request) -> web.Response:
        return web.json_response(await self._info_document())

    async def flush_cache(self, request: web.Request) -> web.Response:
        outcome = await self.router.flush_cache()
        if not outcome.flushed:
            raise HttpError(400, outcome.message or "cache not flushed")
        return web.Response(text=CACHE_FLUSHED)

    async def abort_request(self, request: web.Request) -> web.Response:
        body = validate_body(AbortRequestBody, await read_json(request, self.config))
        rid = check_rid(body.rid)
        found = self.router.abort_as(request[OWNER], rid)  # PermissionDeniedError: 403
        return web.json_response({"rid": rid, "found": found})

    def _info(self) -> ModelInfo:
        if self.router.info is None:
            raise UnavailableError("the front door is not connected to the mesh yet")
        return self.router.info


def _answer(done: TextCompletion, stream: RequestStream, started: float) -> dict:
    return generate_answer(done.rid, done.text, done.token_ids, done.finish, done.usage,
                           stream.num_prompt_tokens, time.perf_counter() - started)


async def server_info(router: FrontDoorCore, config: FrontDoorFlags) -> dict:
    """SGLang's server info document: version, the front door's flags, the model, the load.
    The same for GET /get_server_info and gRPC GetServerInfo."""
    info = router.info
    if info is None:
        raise UnavailableError("the front door is not connected to the mesh yet")
    load = await router.get_load()
    return {"version": _VERSION, **public_flags(config),
            "model_info": {**dataclasses.asdict(info), "model_id": config.served_model_name,
                           "eos_token_ids": list(info.eos_token_ids)},
            "internal_states": [dataclasses.asdict(load)]}


def public_flags(config: FrontDoorFlags) -> dict:
    """The front door's flags as JSON, without those kept out of repr (keys, tokens)."""
    flags = {}
    for spec in dataclasses.fields(config):
        if spec.repr:
            value = getattr(config, spec.name)
            flags[spec.name] = list(value) if isinstance(value, tuple) else value
    return flags
