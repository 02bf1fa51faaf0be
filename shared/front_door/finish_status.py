"""What a request that ended in an abort answers at the front door.

A finish of kind "abort" is never a success to report with 200:
- carrying a status code (`FinishReason.status_code`, set where a service refused the request:
  the scheduler's input checks say 400, a failure 500), it is that error: 400 /
  INVALID_ARGUMENT naming the field the refusal named, and so on;
- without one, the request was aborted on purpose (by its owner through `/abort_request` or
  gRPC `Abort`): `RequestAbortedError`, HTTP 499 / gRPC CANCELLED. 499 ("client closed
  request", nginx's) is the HTTP status Google's API guidelines map CANCELLED to; the
  official `openai` client raises it as an `APIStatusError` and, unlike 409, 429 or 5xx,
  does not retry it, which is right: retrying would undo an abort its owner asked for.
  SGLang and vLLM answer such a request 200 with finish_reason "abort", which a client
  reading only the status takes for a complete answer.
A stream's headers are gone by the time it ends: an aborted stream ends with its "abort"
finish, as SGLang's do, and only a refusal with a status becomes an error in the stream.
"""

from __future__ import annotations

import re
from http import HTTPStatus

import grpc

from radixmesh.shared.errors import InvalidRequestError, RadixMeshError
from radixmesh.shared.requests import FinishKind, FinishReason

CLIENT_CLOSED_REQUEST = 499
# The gRPC code and OpenAI error type of each HTTP status a finish may carry.
_BY_STATUS: dict[int, tuple[grpc.StatusCode, str]] = {
    HTTPStatus.BAD_REQUEST: (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error"),
    HTTPStatus.FORBIDDEN: (grpc.StatusCode.PERMISSION_DENIED, "permission_error"),
    HTTPStatus.NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "not_found_error"),
    HTTPStatus.TOO_MANY_REQUESTS: (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit_error"),
    CLIENT_CLOSED_REQUEST: (grpc.StatusCode.CANCELLED, "request_aborted"),
    HTTPStatus.SERVICE_UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, "service_unavailable"),
    HTTPStatus.GATEWAY_TIMEOUT: (grpc.StatusCode.DEADLINE_EXCEEDED, "timeout"),
}
# "field: message", as str(InvalidRequestError) reads: the field a refusal blamed.
_BLAMED = re.compile(r"(?P<field>[A-Za-z_][\w.\[\]]*): (?P<message>.+)", re.DOTALL)


class RequestAbortedError(RadixMeshError):
    """A request aborted on purpose before it finished (see the module's docstring)."""

    grpc_status = grpc.StatusCode.CANCELLED
    http_status = CLIENT_CLOSED_REQUEST
    openai_type = "request_aborted"


class MeshRefusalError(RadixMeshError):
    """A refusal inside the mesh with the HTTP status it carried (other than 400, which
    becomes an InvalidRequestError naming its field)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        known = 400 <= status <= 599
        self.http_status = status if known else HTTPStatus.INTERNAL_SERVER_ERROR
        self.grpc_status, self.openai_type = _BY_STATUS.get(
            self.http_status, (grpc.StatusCode.INTERNAL, "internal_error"))


def finish_error(finish: FinishReason | None) -> RadixMeshError | None:
    """The error an aborted request answers with; None for a request that finished."""
    if finish is None or finish.kind is not FinishKind.ABORT:
        return None
    if finish.status_code is None:
        return RequestAbortedError(finish.message or "the request was aborted")
    if finish.status_code == HTTPStatus.BAD_REQUEST:
        blamed = _BLAMED.fullmatch(finish.message)
        if blamed is None:
            return InvalidRequestError("request", finish.message or "refused")
        return InvalidRequestError(blamed["field"], blamed["message"])
    return MeshRefusalError(finish.message or "refused", finish.status_code)


def refusal(finish: FinishReason | None) -> RadixMeshError | None:
    """For a stream: the error of a finish that carries a status; None otherwise (a
    client's abort ends a stream with its abort finish)."""
    if finish is None or finish.status_code is None:
        return None
    return finish_error(finish)
