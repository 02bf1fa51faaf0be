"""Conversions of the common.proto messages that several links carry: a request's finish, its
usage and its trace context (see wire.py for why conversions live apart from the cores)."""

from __future__ import annotations

from radixmesh.shared.protos_gen import common_pb2
from radixmesh.shared.requests import FinishKind, FinishReason, Usage
from radixmesh.shared.trace_context import NO_TRACE, TraceContext


def finish_to_proto(finish: FinishReason) -> common_pb2.FinishReason:
    message = common_pb2.FinishReason(type=finish.kind.value, message=finish.message,
                                      status_code=finish.status_code or 0)
    if isinstance(finish.matched, str):
        message.matched_text = finish.matched
    elif finish.matched is not None:
        message.matched_token_id = finish.matched
    return message


def finish_from_proto(message: common_pb2.FinishReason) -> FinishReason | None:
    """None for an unset message (type empty)."""
    if not message.type:
        return None
    which = message.WhichOneof("matched")
    matched = getattr(message, which) if which else None
    return FinishReason(FinishKind(message.type), matched=matched, message=message.message,
                        status_code=message.status_code or None)


def usage_to_proto(usage: Usage) -> common_pb2.Usage:
    return common_pb2.Usage(prompt_tokens=usage.prompt_tokens,
                            completion_tokens=usage.completion_tokens,
                            cached_tokens=usage.cached_tokens)


def usage_from_proto(message: common_pb2.Usage) -> Usage:
    return Usage(message.prompt_tokens, message.completion_tokens, message.cached_tokens)


def trace_to_proto(trace: TraceContext) -> common_pb2.TraceContext:
    return common_pb2.TraceContext(traceparent=trace.traceparent, tracestate=trace.tracestate)


def trace_from_proto(message: common_pb2.TraceContext) -> TraceContext:
    """As sent: the front door already dropped a malformed context."""
    if not message.traceparent:
        return NO_TRACE
    return TraceContext(message.traceparent, message.tracestate)
