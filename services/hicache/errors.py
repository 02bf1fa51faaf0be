"""The error the hicache service adds to the shared table (`shared/errors.py`)."""

from __future__ import annotations

import grpc

from radixmesh.shared.errors import RadixMeshError


class StalePoolError(RadixMeshError):
    """A transfer names slots of a pool this service no longer has: another epoch (the service
    restarted, or a re-attach replaced the pool) or none attached yet.

    FAILED_PRECONDITION, not INVALID_ARGUMENT: the request is well formed, the service's state
    moved on. The caller fixes it by re-attaching and dropping the host slots it knew, not by
    changing the request, and must not retry it as it is.
    """

    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    openai_type = "invalid_request_error"


class ForeignNamespaceError(RadixMeshError):
    """A peer asked for pages of a key namespace (model, weights, dtype, page size, TP layout)
    other than the one this node caches: none of its pages could be the ones it wants.

    FAILED_PRECONDITION: the request is well formed; the two nodes serve different models.
    """

    grpc_status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 409
    openai_type = "invalid_request_error"
