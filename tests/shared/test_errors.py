"""One table turns errors into statuses, for the gRPC and the HTTP doors alike."""

from __future__ import annotations

import grpc
import pytest

from radixmesh.shared.errors import (
    CapacityError,
    InvalidRequestError,
    UnavailableError,
    grpc_code,
    http_status,
    openai_type,
)


@pytest.mark.parametrize(("error", "code", "status", "kind"), [
    (InvalidRequestError("top_p", "must be in (0, 1]"), grpc.StatusCode.INVALID_ARGUMENT, 400,
     "invalid_request_error"),
    (CapacityError("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_error"),
    (UnavailableError("scheduler gone"), grpc.StatusCode.UNAVAILABLE, 503,
     "service_unavailable"),
    (RuntimeError("a bug"), grpc.StatusCode.INTERNAL, 500, "internal_error"),
])
def test_each_error_has_one_grpc_and_one_http_status(error: Exception, code: grpc.StatusCode,
                                                     status: int, kind: str) -> None:
    assert (grpc_code(error), http_status(error), openai_type(error)) == (code, status, kind)


def test_an_invalid_request_names_its_field() -> None:
    error = InvalidRequestError("top_p", "must be in (0, 1]")
    assert str(error) == "top_p: must be in (0, 1]" and error.field == "top_p"
