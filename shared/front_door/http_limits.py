"""The front door's connection limits and the checks on a JSON body before it is used.

- JSON: depth is measured on the raw bytes before `json.loads` builds anything (Python's json
  recurses until RecursionError, a 500), and every decoded string must be valid UTF-8 (JSON's
  `"\\ud800"` escapes decode to lone surrogates, which break the internal wire encoding).
- HTTP: `start_http` serves an app with a cap on open connections (one over it is answered
  503 and closed) and a header timeout: aiohttp's keep-alive timer starts when a connection
  opens and after each response, and closes a connection still waiting for a complete request
  head when it fires, so a client that trickles its headers is dropped as an idle one is.
- gRPC: `grpc_limit_options` caps the streams of one HTTP/2 connection; the servicer caps all
  streams together.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from collections.abc import Callable
from itertools import accumulate

from aiohttp import web

from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.flags import FrontDoorFlags
from radixmesh.shared.text_checks import check_json_text
from radixmesh.shared.tls import public_server_tls

# A JSON string token (the "unrolled loop" form: no backtracking per character).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_DEPTH_STEP = tuple(1 if byte in b"[{" else -1 if byte in b"]}" else 0 for byte in range(256))
# A `\u` escape of a surrogate: only then may a decoded string hold a lone one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
# How long a connection over the cap may take to send its request before it is closed.
REFUSED_LINGER_S = 2.0


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text; exact for valid JSON."""
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def parse_json_body(raw: bytes, max_depth: int) -> object:
    """The decoded body; raises InvalidRequestError("body" or the path of a bad string)."""
    # Cheap bound first: nesting never exceeds the number of openers.
    if raw.count(b"[") + raw.count(b"{") > max_depth and json_depth(raw) > max_depth:
        raise InvalidRequestError("body", f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequestError("body", f"malformed JSON body: {exc}") from exc
    if _SURROGATE_ESCAPE.search(raw):
        check_json_text(value)
    return value


class _Refused(asyncio.Protocol):
    """A connection over the cap: answered 503 once its request starts arriving, then its
    writing side is shut and what follows discarded until the client closes (so the client
    reads the answer rather than a reset), for REFUSED_LINGER_S at most."""

    BODY = (b'{"error": {"message": "too many connections; retry later", '
            b'"type": "service_unavailable", "param": null, "code": 503}}')
    RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nRetry-After: 1\r\nContent-Length: %d\r\n\r\n%s"
                % (len(BODY), BODY))

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._answered or self._transport is None:
            return
        self._answered = True
        self._transport.write(self.RESPONSE)
        if self._transport.can_write_eof():
            self._transport.write_eof()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


def capped(server: web.Server, max_connections: int) -> Callable[[], asyncio.Protocol]:
    """`server`'s protocol factory, but a connection past `max_connections` is refused."""

    def protocol() -> asyncio.Protocol:
        if len(server.connections) >= max_connections:
            return _Refused()
        return server()

    return protocol


class CappedTCPSite(web.TCPSite):
    """A TCPSite whose runner's server takes at most `max_connections` connections."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int,
                 max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context)
        self._max_connections = max_connections

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None, "the runner is set up first"
        self._server = await asyncio.get_running_loop().create_server(
            capped(server, self._max_connections), self._host, self._port,
            ssl=self._ssl_context, backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1]


async def start_http(app: web.Application, config: FrontDoorFlags,
                     port: int | None = None) -> tuple[web.AppRunner, CappedTCPSite]:
    """Serves `app` on the configured host and port (or `port`) with the connection limits,
    over HTTPS when `--ssl-certfile` is set. Handler cancellation turns a client disconnect
    into a cancelled handler: an abort."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           keepalive_timeout=config.http_header_timeout)
    await runner.setup()
    tls = public_server_tls(config)
    site = CappedTCPSite(runner, config.host, config.port if port is None else port,
                         config.max_connections, tls.ssl_context() if tls else None)
    await site.start()
    return runner, site


def grpc_limit_options(config: FrontDoorFlags) -> list[tuple[str, int]]:
    """gRPC server options: each connection's concurrent streams (HTTP/2 SETTINGS; a client
    past it waits for a free stream rather than failing)."""
    return [("grpc.max_concurrent_streams", config.max_concurrent_streams)]
