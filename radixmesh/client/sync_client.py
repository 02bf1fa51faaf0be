"""A blocking client: the AsyncClient, driven on an event loop in a private thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from types import TracebackType
from typing import TypeVar

from radixmesh.client.async_client import DEFAULT_ADDRESS, AsyncClient, client_tls
from radixmesh.client.types import Completion, GenerateChunk, ModelInfo

T = TypeVar("T")


class Client:
    """Blocking twin of AsyncClient, usable from code with no event loop (or a different one).

    Closing a `generate` iterator early (break, garbage collection) cancels the request.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, ssl_ca_certs: str | None = None,
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                 api_key: str | None = None) -> None:
        """The TLS options and `api_key` are AsyncClient's."""
        client_tls(ssl_ca_certs, ssl_certfile, ssl_keyfile)  # a bad file fails here, not later
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="radixmesh-client", daemon=True)
        self._thread.start()
        self._client: AsyncClient = self._run(self._open(
            address, ssl_ca_certs=ssl_ca_certs, ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile, api_key=api_key))

    @staticmethod
    async def _open(address: str, **tls: str | None) -> AsyncClient:
        # gRPC aio channels belong to the loop they are made on.
        return AsyncClient(address, **tls)

    def _run(self, coro: Coroutine[object, object, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def generate(self, **kwargs: object) -> Iterator[GenerateChunk]:
        """Same arguments as AsyncClient.generate; yields chunks as they arrive."""
        stream = self._client.generate(**kwargs)
        try:
            while True:
                try:
                    yield self._run(_next(stream))
                except StopAsyncIteration:
                    return
        finally:
            self._run(stream.aclose())

    def complete(self, **kwargs: object) -> Completion[dict, dict]:
        return self._run(self._client.complete(**kwargs))

    def abort(self, rid: str) -> bool:
        return self._run(self._client.abort(rid))

    def model_info(self) -> ModelInfo:
        return self._run(self._client.model_info())

    def wait_ready(self, timeout: float | None = None) -> None:
        self._run(self._client.wait_ready(timeout))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


async def _next(stream: AsyncIterator[GenerateChunk]) -> GenerateChunk:
    return await anext(stream)
