"""Client arguments -> GenerateRequest, and GenerateResponse -> GenerateChunk."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from radixmesh.client.types import GenerateChunk, ModelInfo, RadixMeshClientError
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, generate_pb2

SAMPLING_NAMES = frozenset(common_pb2.SamplingParams.DESCRIPTOR.fields_by_name)
_LIST_NAMES = ("stop", "stop_token_ids")


def build_generate_request(*, text: str | None, input_ids: Sequence[int] | None,
                           messages: Sequence[dict] | None, rid: str,
                           traceparent: str | None, sampling: dict,
                           ) -> generate_pb2.GenerateRequest:
    """Exactly one of text, input_ids and messages; sampling keys are SamplingParams fields
    (None means the server's default)."""
    given = [name for name, value in (("text", text), ("input_ids", input_ids),
                                      ("messages", messages)) if value is not None]
    if len(given) != 1:
        raise TypeError(f"pass exactly one of text, input_ids or messages (got {given or 'none'})")
    request = generate_pb2.GenerateRequest(rid=rid, sampling=sampling_proto(sampling))
    if text is not None:
        request.text = text
    elif input_ids is not None:
        request.input_ids.ids.extend(input_ids)
    else:
        request.messages.messages.extend(
            generate_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages)
    if traceparent:
        request.trace.traceparent = traceparent
    return request


def sampling_proto(sampling: dict) -> common_pb2.SamplingParams:
    unknown = sorted(set(sampling) - SAMPLING_NAMES)
    if unknown:
        raise TypeError(f"unknown sampling parameter {unknown[0]!r}; "
                        f"known: {', '.join(sorted(SAMPLING_NAMES))}")
    message = common_pb2.SamplingParams()
    for name, value in sampling.items():
        if value is None:
            continue
        if name in _LIST_NAMES:
            getattr(message, name).extend([value] if isinstance(value, str) else value)
        else:
            setattr(message, name, value)
    return message


def chunk_from_response(response: generate_pb2.GenerateResponse) -> GenerateChunk:
    finish = wire.finish_from_proto(response.finish)
    usage = wire.usage_from_proto(response.usage) if response.HasField("usage") else None
    return GenerateChunk(rid=response.rid, token_ids=list(response.token_ids),
                         text=response.text,
                         finish=finish.to_dict() if finish is not None else None,
                         usage=usage.to_dict() if usage is not None else None)


def model_info_from_proto(message: generate_pb2.ModelInfo) -> ModelInfo:
    return ModelInfo(model_id=message.model_id, context_len=message.context_len,
                     vocab_size=message.vocab_size, eos_token_ids=tuple(message.eos_token_ids),
                     max_total_tokens=message.max_total_tokens, page_size=message.page_size,
                     worker=message.worker)


def client_error(exc: grpc.RpcError) -> RadixMeshClientError:
    if isinstance(exc, grpc.aio.AioRpcError):
        return RadixMeshClientError(exc.code().name, exc.details() or "")
    return RadixMeshClientError("UNKNOWN", str(exc))
