"""Errors that cross service boundaries, and the one table that turns any error into a status.

Each RadixMeshError subclass declares its gRPC status code, HTTP status and OpenAI error
`type` next to its meaning; `grpc_code`, `http_status` and `openai_type` read them and give
every other exception the INTERNAL / 500 a bug deserves. Servicers and HTTP handlers call
these instead of mapping exceptions by hand, so the gRPC and HTTP doors cannot disagree.
"""

from __future__ import annotations

from typing import ClassVar

import grpc


class RadixMeshError(Exception):
    """Base of every error radixmesh raises on purpose."""

    grpc_status: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    http_status: ClassVar[int] = 500
    openai_type: ClassVar[str] = "internal_error"


class InvalidRequestError(RadixMeshError):
    """The request itself is wrong: the client must change it. Names the offending field."""

    grpc_status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    openai_type = "invalid_request_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CapacityError(RadixMeshError):
    """The server cannot take the request now (queue full, pool too small for it)."""

    grpc_status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    openai_type = "rate_limit_error"


class UnavailableError(RadixMeshError):
    """A peer (scheduler, detokenizer, ...) cannot be reached; the client may retry later."""

    grpc_status = grpc.StatusCode.UNAVAILABLE
    http_status = 503
    openai_type = "service_unavailable"


def grpc_code(error: BaseException) -> grpc.StatusCode:
    """The gRPC status a servicer aborts with for `error`."""
    return error.grpc_status if isinstance(error, RadixMeshError) else grpc.StatusCode.INTERNAL


def http_status(error: BaseException) -> int:
    """The HTTP status an endpoint answers with for `error`."""
    return error.http_status if isinstance(error, RadixMeshError) else 500


def openai_type(error: BaseException) -> str:
    """The `type` of an OpenAI-style error body for `error`."""
    return error.openai_type if isinstance(error, RadixMeshError) else "internal_error"
