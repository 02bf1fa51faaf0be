"""What every HTTP route of the front door shares: OpenAI-shaped errors, reading a JSON body,
the per-request values the middlewares set for the handlers (its root span, its owner), and
how a generation ends: its finish checked, or its events streamed.

`HttpError` is raised by handlers and turned into a response by the API's middleware; its body
is OpenAI's (`{"error": {"message", "type", "param", "code"}}`), so the official client raises
the matching exception (401 AuthenticationError, 404 NotFoundError, ...). `read_json` reads a
body within `--http-body-timeout` (408 past it) and decodes it with `parse_json_body`: too
deep, malformed or holding text that is not UTF-8, it is a 400 naming the body or the field.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from contextlib import aclosing

from aiohttp import web

from radixmesh.shared.api_keys import Owner
from radixmesh.shared.errors import (
    CapacityError,
    InvalidRequestError,
    RadixMeshError,
    http_status,
    openai_type,
)
from radixmesh.shared.front_door import openai_responses as responses
from radixmesh.shared.front_door.finish_status import CLIENT_CLOSED_REQUEST, finish_error, refusal
from radixmesh.shared.front_door.flags import FrontDoorFlags
from radixmesh.shared.front_door.http_limits import parse_json_body
from radixmesh.shared.front_door.request_span import RequestSpan
from radixmesh.shared.requests import FinishReason, TextDelta

# Set by the middlewares: a generating route's root span, and every request's owner (the
# digest of its API key; None with no keys configured, or on an open route).
REQUEST_SPAN = web.RequestKey("radixmesh_request_span", RequestSpan)
OWNER = web.RequestKey("radixmesh_owner", Owner)
# Set by a handler once a streamed response's headers are out: no error response can follow.
STREAMING = web.RequestKey("radixmesh_streaming", bool)


class HttpError(Exception):
    """An error reported to the client as an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 error_type: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.error_type = status, message, param, error_type
        self.headers = headers or {}

    @classmethod
    def of(cls, error: BaseException, message: str | None = None,
           param: str | None = None) -> HttpError:
        """`error` with the status and type that the shared table (shared/errors.py) gives;
        a refusal for capacity says when to retry (the `openai` client waits that long)."""
        headers = {"Retry-After": "1"} if isinstance(error, CapacityError) else None
        return cls(http_status(error), str(error) if message is None else message, param,
                   openai_type(error), headers)

    @classmethod
    def blamed(cls, error: InvalidRequestError, param: str) -> HttpError:
        """`error` blamed on `param`, the name the client used for the field it names."""
        return cls.of(error, f"{param}: {error.message}", param)

    def body(self) -> dict:
        return responses.error_body(self.message, self.param, self.status, self.error_type)

    def response(self) -> web.Response:
        # aiohttp knows no reason phrase for nginx's 499; say it rather than send none.
        reason = "Client Closed Request" if self.status == CLIENT_CLOSED_REQUEST else None
        return web.json_response(self.body(), status=self.status, reason=reason,
                                 headers=self.headers)


def error_param(error: BaseException) -> str | None:
    """The field an error blames, for an error body's `param`."""
    return error.field if isinstance(error, InvalidRequestError) else None


async def read_json(request: web.Request, config: FrontDoorFlags) -> object:
    """The request's body as decoded JSON; HttpError (408, 413, 400) when it cannot be."""
    try:
        async with asyncio.timeout(config.http_body_timeout):
            raw = await request.read()
    except TimeoutError as exc:  # a client trickling its body holds a handler: let go
        raise HttpError(408, f"request body not received within "
                        f"{config.http_body_timeout:g} s", "body") from exc
    except web.HTTPRequestEntityTooLarge as exc:
        raise HttpError(413, f"request body exceeds the limit of "
                        f"{config.max_request_bytes} bytes", "body") from exc
    try:
        return parse_json_body(raw, config.max_json_depth)
    except InvalidRequestError as exc:
        raise HttpError.of(exc, param=exc.field) from exc


def raise_finish_error(finish: FinishReason | None, param_name: Callable[[str], str]) -> None:
    """An aborted or refused request is no 200: raises its error, a refusal blamed on
    `param_name` of the field (the name the client used for it)."""
    error = finish_error(finish)
    if isinstance(error, InvalidRequestError):
        raise HttpError.blamed(error, param_name(error.field))
    if error is not None:
        raise error


async def unrefused(deltas: AsyncIterable[TextDelta]) -> AsyncGenerator[TextDelta, None]:
    """The deltas, a refusal inside the mesh raised as its error rather than passed on as a
    finish."""
    async for delta in deltas:
        error = refusal(delta.finish)
        if error is not None:
            raise error
        yield delta


async def stream_events(request: web.Request, span: RequestSpan,
                        events: AsyncGenerator[dict, None]) -> web.StreamResponse:
    """Sends `events` as server-sent events, then `[DONE]`. Once the headers are out no error
    response can follow: a failure `events` raises (the mesh went away, a refusal) becomes an
    error event in the stream; a client that left just ends it (leaving the request stream's
    `async with` then aborts the request)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    request[STREAMING] = True
    try:
        async with aclosing(events):
            async for event in events:
                await response.write(responses.sse_event(event))
    except RadixMeshError as exc:
        span.fail(exc)
        await response.write(responses.sse_event(HttpError.of(exc, param=error_param(exc)).body()))
    except ConnectionResetError as exc:
        span.fail(exc)
        return response
    await response.write(responses.SSE_DONE)
    await response.write_eof()
    return response
