"""The router's gRPC link to one node: the node front door's public `Generation` API.

A request goes out as token ids (the router tokenized it; the node does not again), with its
sampling parameters, cache salt and trace context, and the key the router was given for nodes;
the node's GenerateResponse stream comes back as TextDeltas (the node detokenized). Failures
are sorted in two: `NodeFailure` (the node is down, unreachable or broke the stream: another
node may take the request) and the request's own refusal, raised as the RadixMeshError its
status names (the client gets the node's answer, as from a single node). A link speaks TLS
when given a `ClientTLS` (`node_tls.py` says when); a TLS handshake that fails is a
`NodeFailure` whose message says so.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc

from radixmesh.shared import wire
from radixmesh.shared.api_keys import AUTHORIZATION
from radixmesh.shared.errors import (
    CapacityError,
    InvalidRequestError,
    RadixMeshError,
    UnavailableError,
)
from radixmesh.shared.grpc_service import RECONNECT_OPTIONS, open_channel
from radixmesh.shared.mesh_info import CacheFlush, ModelInfo
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from radixmesh.shared.requests import TextDelta, TokenizedRequest
from radixmesh.shared.tls import ClientTLS

PROBE_TIMEOUT_S = 2.0
# What a node's own answer means for the request (not for the node).
_REFUSALS = {grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityError}
# What a node's key refusal means: the router is misconfigured, not the client.
_KEY_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Messages of up to 64 MiB: a node answers no bigger than its own limits allow.
_OPTIONS = (("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20), *RECONNECT_OPTIONS)
# How gRPC's core words a failed TLS handshake in a call's details (it has no status of its
# own for it: the call fails UNAVAILABLE, as if the node were down).
_HANDSHAKE_FAILED = ("handshake failed", "CERTIFICATE_VERIFY_FAILED")
# A connection closed before any call could start, as a TLS port closes a plain-text client
# or a node requiring a client certificate closes a TLS client that showed none.
_CLOSED_AT_CONNECT = ("failed to connect", "Socket closed")


class NodeFailure(UnavailableError):
    """The node could not serve (down, unreachable, stream broken): not the request's fault."""


def request_message(request: TokenizedRequest) -> generate_pb2.GenerateRequest:
    message = generate_pb2.GenerateRequest(
        rid=request.rid, input_ids=generate_pb2.TokenIds(ids=request.input_ids),
        sampling=wire.sampling_to_proto(request.sampling))
    if request.trace:
        message.trace.traceparent = request.trace.traceparent
        message.trace.tracestate = request.trace.tracestate
    if request.cache_salt is not None:
        message.cache_salt = request.cache_salt
    return message


def delta_of(message: generate_pb2.GenerateResponse) -> TextDelta:
    return TextDelta(message.rid, message.text, list(message.token_ids),
                     wire.finish_from_proto(message.finish) if message.HasField("finish")
                     else None,
                     wire.usage_from_proto(message.usage) if message.HasField("usage") else None)


def error_of(error: grpc.aio.AioRpcError, node: str, tls: bool = False) -> RadixMeshError:
    """The error a failed call means: the request's refusal, or the node's failure (`tls`: the
    link speaks TLS, for the hint on a connection the node closed)."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, message = details.partition(": ")
        return InvalidRequestError(field, message) if message else InvalidRequestError(
            "request", details)
    if code in _REFUSALS:
        return _REFUSALS[code](details)
    if code in _KEY_REFUSED:
        return NodeFailure(f"node {node} refused the router's key ({code.name}): set "
                           "--node-api-key to a key the nodes accept")
    return NodeFailure(f"node {node}: {code.name}: {details}{_tls_hint(details, tls)}")


def _tls_hint(details: str, tls: bool) -> str:
    """What a connection failure likely means for a link of this kind ('' when nothing)."""
    if any(sign in details for sign in _HANDSHAKE_FAILED):
        return (" (TLS handshake failed: the node's certificate must be signed by the CA of "
                "--node-ssl-ca-certs and name the host it is reached by)")
    if not all(sign in details for sign in _CLOSED_AT_CONNECT):
        return ""
    if tls:
        return (" (the node closed the TLS connection: does it require a client certificate "
                "(--node-ssl-certfile/--node-ssl-keyfile) signed by a CA it trusts?)")
    return " (if the node serves TLS, give --node-ssl-ca-certs)"


class NodeLink:
    """`tls` None: plain text."""

    def __init__(self, address: str, api_key: str | None = None,
                 tls: ClientTLS | None = None) -> None:
        self.address = address
        self.tls = tls is not None
        self._metadata = ((AUTHORIZATION, f"Bearer {api_key}"),) if api_key else ()
        self._channel = open_channel(address, tls, options=_OPTIONS)
        self._stub = generate_pb2_grpc.GenerationStub(self._channel)

    async def generate(self, request: TokenizedRequest) -> AsyncIterator[TextDelta]:
        """The node's deltas for `request`; cancelling the iteration cancels the call (the
        node aborts the request)."""
        call = self._stub.Generate(request_message(request), metadata=self._metadata)
        try:
            async for message in call:
                yield delta_of(message)
        except grpc.aio.AioRpcError as error:
            raise error_of(error, self.address, self.tls) from None
        finally:
            call.cancel()  # a no-op once the call has ended

    async def model_info(self) -> ModelInfo:
        """The node's model; NodeFailure when it does not answer (a probe)."""
        try:
            reply = await self._stub.GetModelInfo(common_pb2.Empty(), metadata=self._metadata,
                                                  timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise error_of(error, self.address, self.tls) from None
        return wire.model_info_from_proto(reply)

    async def server_info(self) -> dict:
        try:
            reply = await self._stub.GetServerInfo(common_pb2.Empty(), metadata=self._metadata,
                                                   timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise error_of(error, self.address, self.tls) from None
        return json.loads(reply.json)

    async def flush_cache(self) -> CacheFlush:
        try:
            reply = await self._stub.FlushCache(common_pb2.Empty(), metadata=self._metadata,
                                                timeout=PROBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            raise error_of(error, self.address, self.tls) from None
        return CacheFlush(reply.flushed, reply.message, reply.freed_pages)

    async def close(self) -> None:
        await self._channel.close()


class NodeLinks:
    """Opens the router's links to nodes, each with the key for nodes and, where the link
    speaks TLS, the router's node TLS credentials."""

    def __init__(self, api_key: str | None, tls: ClientTLS, registered_tls: bool) -> None:
        """`registered_tls`: whether links to nodes from the registry speak TLS."""
        self._api_key, self._tls, self._registered_tls = api_key, tls, registered_tls

    def open(self, address: str, tls: bool | None = None) -> NodeLink:
        """A link to `address`; `tls` None: as for a registered node."""
        secure = self._registered_tls if tls is None else tls
        return NodeLink(address, self._api_key, self._tls if secure else None)
