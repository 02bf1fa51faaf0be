"""Decoding the public gRPC API's requests so that a malformed one ends INVALID_ARGUMENT
naming the field, never UNKNOWN.

gRPC runs a method's deserializer before its handler, and a deserializer that raises (bytes
that are not protobuf, a string field that is not UTF-8) ends the call UNKNOWN with a Python
exception's text. `add_tolerant_service` registers a service's methods (the front door's
`Generation`) with decoders that never raise: bytes that do not decode become a `Malformed`
request carrying an InvalidRequestError, and the method's handler is wrapped to refuse it
(after checking the caller's key, as every call is checked). Fields the schema does not
declare (a client built from another version of the protos, a field sent with the wrong wire
type) are refused too, as unknown fields of an HTTP body are: ignoring them would silently
drop what was asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from google.protobuf.unknown_fields import UnknownFieldSet

from radixmesh.shared.errors import InvalidRequestError

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a decoder hands the handler in place of a request it could not accept."""

    error: InvalidRequestError


class Refuser(Protocol):
    async def refuse(self, context: grpc.aio.ServicerContext,
                     error: InvalidRequestError) -> None:
        """Checks the caller's key, then ends the call INVALID_ARGUMENT with `error`."""


def decoder(descriptor: Descriptor) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer for `descriptor`'s messages that never raises."""
    message_class = GetMessageClass(descriptor)

    def decode(raw: bytes) -> Message | Malformed:
        try:
            message = message_class.FromString(raw)
        except (DecodeError, RuntimeError, ValueError) as exc:
            field = bad_field(descriptor, raw) or "request"
            return Malformed(InvalidRequestError(field, f"malformed protobuf: {exc}"))
        unknown = unknown_field(message)
        if unknown is not None:
            return Malformed(InvalidRequestError(unknown, "unknown field, or a field of "
                                                 "the wrong type, for this API version"))
        return message

    return decode


def unknown_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first field `message` (or a message inside it) does not declare, or
    None. A declared field number sent with another wire type counts: protobuf keeps it apart
    as unknown."""
    unknown = UnknownFieldSet(message)
    if len(unknown):
        number = unknown[0].field_number
        declared = message.DESCRIPTOR.fields_by_number.get(number)
        return prefix + (declared.name if declared else f"<field {number}>")
    for field, value in message.ListFields():
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        children = value if _is_repeated(field) else [value]
        for index, child in enumerate(children):
            where = f"{prefix}{field.name}" + (f"[{index}]" if _is_repeated(field) else "")
            found = unknown_field(child, where + ".")
            if found is not None:
                return found
    return None


def bad_field(descriptor: Descriptor, raw: bytes, prefix: str = "") -> str | None:
    """The path of the field whose bytes broke the decoding: a string that is not UTF-8, a
    message inside that does not decode, or where the wire format stops making sense; None
    when no single field is to blame."""
    counts: dict[int, int] = {}
    position = 0
    while position < len(raw):
        try:
            key, position = _varint(raw, position)
            number, wire_type = key >> 3, key & 7
            start, position = _skip(raw, position, wire_type)
        except IndexError:
            return prefix.rstrip(".") or None
        field = descriptor.fields_by_number.get(number)
        if field is None or wire_type != _LENGTH:
            continue
        index = counts.get(number, 0)
        counts[number] = index + 1
        where = prefix + field.name + (f"[{index}]" if _is_repeated(field) else "")
        payload = raw[start:position]
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return where
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = bad_field(field.message_type, payload, where + ".")
            if inner is not None:
                return inner
            if not _decodes(field.message_type, payload):  # e.g. a broken packed list
                return where
    return None


def _decodes(descriptor: Descriptor, raw: bytes) -> bool:
    try:
        GetMessageClass(descriptor).FromString(raw)
    except (DecodeError, RuntimeError, ValueError):
        return False
    return True


def _is_repeated(field: FieldDescriptor) -> bool:
    # `is_repeated` replaced `label` in protobuf 6; either may be all there is.
    repeated = getattr(field, "is_repeated", None)
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _varint(raw: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[position]  # IndexError past the end: truncated
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def _skip(raw: bytes, position: int, wire_type: int) -> tuple[int, int]:
    """(start of the value's payload, position after it); IndexError if it does not fit."""
    if wire_type == _VARINT:
        return position, _varint(raw, position)[1]
    sizes = {_FIXED64: 8, _FIXED32: 4}
    if wire_type == _LENGTH:
        size, position = _varint(raw, position)
    elif wire_type in sizes:
        size = sizes[wire_type]
    else:  # groups (deprecated) and invalid wire types
        raise IndexError(f"wire type {wire_type}")
    if position + size > len(raw):
        raise IndexError("value past the end")
    return position, position + size


# ---- registration ---------------------------------------------------------------------------

Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


def _guarded_unary(method: Handler, refuser: Refuser) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await refuser.refuse(context, request.error)
        return await method(request, context)

    return handle


def _guarded_stream(method: Handler, refuser: Refuser) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Malformed):
            await refuser.refuse(context, request.error)
        async for response in method(request, context):
            yield response

    return handle


def add_tolerant_service(service: ServiceDescriptor, servicer: Any,
                         server: grpc.aio.Server) -> None:
    """Registers `servicer` (which implements `service` and is a Refuser) as the generated
    `add_..._to_server` would, with decoders that never raise. Every method takes one
    request (no client streaming)."""
    handlers = {}
    for method in service.methods:
        assert not method.client_streaming, f"{method.full_name} streams requests"
        serialize = GetMessageClass(method.output_type).SerializeToString
        implementation = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _guarded_stream(implementation, servicer),
                request_deserializer=decoder(method.input_type),
                response_serializer=serialize)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _guarded_unary(implementation, servicer),
                request_deserializer=decoder(method.input_type),
                response_serializer=serialize)
    generic = grpc.method_handlers_generic_handler(service.full_name, handlers)
    server.add_generic_rpc_handlers((generic,))
    server.add_registered_method_handlers(service.full_name, handlers)
