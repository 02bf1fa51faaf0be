"""The asyncio client of the gRPC `Generation` API."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import grpc

from radixmesh.client.messages import build_generate_request, chunk_from_response, client_error
from radixmesh.client.types import Completion, GenerateChunk, ModelInfo
from radixmesh.shared import wire
from radixmesh.shared.api_keys import AUTHORIZATION, keys_from
from radixmesh.shared.grpc_service import CLIENT_OPTIONS, open_channel
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.tls import ClientTLS
from radixmesh.shared.tls_flags import check_ca_file, check_key_pair

DEFAULT_ADDRESS = "127.0.0.1:30001"


class AsyncClient:
    """One channel to a front door; safe to share among many concurrent `generate` calls.

    Every failed call raises RadixMeshClientError with the gRPC status code's name. Leaving
    a `generate` iteration early (break, cancellation) cancels the call, and the server aborts
    the request and frees its pages.

    `api_key` (default: $RADIXMESH_API_KEY) goes with every call as `authorization: Bearer
    <key>`, for a front door started with `--api-key`; a wrong or missing one fails with
    UNAUTHENTICATED.

    TLS: `ssl_ca_certs` (a PEM file of the CAs to trust) for a front door started with
    `--ssl-certfile`; `ssl_certfile` and `ssl_keyfile` too when it requires a client
    certificate (`--ssl-cert-reqs 2`). A certificate alone trusts gRPC's default roots.
    """

    def __init__(self, address: str = DEFAULT_ADDRESS, *, ssl_ca_certs: str | None = None,
                 ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
                 api_key: str | None = None) -> None:
        self.address = address
        self._metadata = auth_metadata(api_key)
        tls = client_tls(ssl_ca_certs, ssl_certfile, ssl_keyfile)
        self._channel = open_channel(address, tls, CLIENT_OPTIONS)
        self._stub = generate_pb2_grpc.GenerationStub(self._channel)

    async def generate(self, *, text: str | None = None, input_ids: Sequence[int] | None = None,
                       messages: Sequence[dict] | None = None, rid: str | None = None,
                       traceparent: str | None = None, timeout: float | None = None,
                       cache_salt: str | None = None,
                       **sampling: object) -> AsyncIterator[GenerateChunk]:
        """Streams one request; `sampling` takes SamplingParams' names (max_new_tokens,
        temperature, top_p, top_k, min_p, seed, stop, stop_token_ids, ignore_eos, penalties).
        An id is made here when `rid` is None, so every chunk and `abort` can name it.
        `cache_salt`: share cached prefixes only with requests of the same salt."""
        request = build_generate_request(text=text, input_ids=input_ids, messages=messages,
                                         rid=rid or uuid.uuid4().hex, traceparent=traceparent,
                                         sampling=sampling, cache_salt=cache_salt)
        call = self._stub.Generate(request, timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                yield chunk_from_response(response)
        except grpc.RpcError as exc:
            raise client_error(exc) from None
        finally:
            call.cancel()  # no-op once finished; otherwise the server aborts the request

    async def complete(self, **kwargs: object) -> Completion[dict, dict]:
        """Runs `generate` to the end and returns everything it produced."""
        completion: Completion[dict, dict] | None = None
        async for chunk in self.generate(**kwargs):
            completion = completion or Completion(chunk.rid)
            completion.add(chunk)
        assert completion is not None, "a stream always ends with a finishing chunk"
        return completion

    async def abort(self, rid: str) -> bool:
        """Aborts a live request; False if the server did not know it (finished or never).
        A request started with another API key is not aborted: PERMISSION_DENIED."""
        try:
            response = await self._stub.Abort(generate_pb2.AbortRequest(rid=rid),
                                              metadata=self._metadata)
        except grpc.RpcError as exc:
            raise client_error(exc) from None
        return response.found

    async def model_info(self) -> ModelInfo:
        try:
            return wire.model_info_from_proto(
                await self._stub.GetModelInfo(common_pb2.Empty(), metadata=self._metadata))
        except grpc.RpcError as exc:
            raise client_error(exc) from None

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Waits until the server accepts connections."""
        await asyncio.wait_for(self._channel.channel_ready(), timeout)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, traceback: TracebackType | None) -> None:
        await self.close()


def client_tls(ssl_ca_certs: str | None = None, ssl_certfile: str | None = None,
               ssl_keyfile: str | None = None) -> ClientTLS | None:
    """TLS to a front door from the client's options (None: plain text); ValueError naming
    the option when a file cannot be used."""
    if ssl_ca_certs is None and ssl_certfile is None and ssl_keyfile is None:
        return None
    if ssl_ca_certs is not None:
        check_ca_file("--ssl-ca-certs", ssl_ca_certs)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("a client certificate needs both --ssl-certfile and --ssl-keyfile")
    if ssl_certfile is not None:
        check_key_pair("--ssl-certfile", ssl_certfile, "--ssl-keyfile", ssl_keyfile)
    return ClientTLS(() if ssl_ca_certs is None else (ssl_ca_certs,), ssl_certfile, ssl_keyfile)


def auth_metadata(api_key: str | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata carrying `api_key`, else $RADIXMESH_API_KEY; none without either."""
    keys = keys_from(() if api_key is None else (api_key,))
    return ((AUTHORIZATION, f"Bearer {keys[0]}"),) if keys else ()
