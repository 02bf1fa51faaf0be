"""Client arguments -> GenerateRequest, and GenerateResponse -> GenerateChunk; everything
else converts through `shared/wire.py`, as the services do."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from radixmesh.client.types import GenerateChunk, RadixMeshClientError
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import generate_pb2


def build_generate_request(*, text: str | None, input_ids: Sequence[int] | None,
                           messages: Sequence[dict] | None, rid: str,
                           traceparent: str | None, sampling: dict,
                           cache_salt: str | None = None,
                           ) -> generate_pb2.GenerateRequest:
    """Exactly one of text, input_ids and messages; sampling keys are SamplingParams fields
    (None means the server's default); `cache_salt` None: no salt."""
    given = [name for name, value in (("text", text), ("input_ids", input_ids),
                                      ("messages", messages)) if value is not None]
    if len(given) != 1:
        raise TypeError(f"pass exactly one of text, input_ids or messages (got {given or 'none'})")
    request = generate_pb2.GenerateRequest(rid=rid,
                                           sampling=wire.sampling_fields_to_proto(sampling))
    if text is not None:
        request.text = text
    elif input_ids is not None:
        request.input_ids.ids.extend(input_ids)
    else:
        request.messages.messages.extend(
            generate_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages)
    if traceparent:
        request.trace.traceparent = traceparent
    if cache_salt is not None:
        request.cache_salt = cache_salt
    return request


def chunk_from_response(response: generate_pb2.GenerateResponse) -> GenerateChunk:
    finish = wire.finish_from_proto(response.finish)
    usage = wire.usage_from_proto(response.usage) if response.HasField("usage") else None
    return GenerateChunk(rid=response.rid, token_ids=list(response.token_ids),
                         text=response.text,
                         finish=finish.to_dict() if finish is not None else None,
                         usage=usage.to_dict() if usage is not None else None)


def client_error(exc: grpc.RpcError) -> RadixMeshClientError:
    if isinstance(exc, grpc.aio.AioRpcError):
        return RadixMeshClientError(exc.code().name, exc.details() or "")
    return RadixMeshClientError("UNKNOWN", str(exc))
