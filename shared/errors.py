"""Errors that cross service boundaries; each maps to one gRPC status and one HTTP status."""

from __future__ import annotations


class RadixMeshError(Exception):
    """Base of every error radixmesh raises on purpose."""

    grpc_status: str = "INTERNAL"
    http_status: int = 500


class InvalidRequestError(RadixMeshError):
    """The request itself is wrong: the client must change it. Names the offending field."""

    grpc_status = "INVALID_ARGUMENT"
    http_status = 400

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class CapacityError(RadixMeshError):
    """The server cannot take the request now (queue full, pool too small for it)."""

    grpc_status = "RESOURCE_EXHAUSTED"
    http_status = 429
