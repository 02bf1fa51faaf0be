"""Overload shedding at the front door (`--max-queued-requests`, SGLang's flag).

The front door knows how many of its requests are live: submitted and not yet finished,
whether they wait in the scheduler's queue or run (it cannot tell those apart without asking
the scheduler, which would cost a round trip per request). Past the limit a new request is
refused at once with 429 / RESOURCE_EXHAUSTED, before its body is parsed, rather than queued
without end (design §11).
"""

from __future__ import annotations

from radixmesh.shared.errors import CapacityError


def check_admission(num_live: int, max_queued_requests: int | None) -> None:
    """Raises CapacityError when `num_live` requests already fill the limit (None: none)."""
    if max_queued_requests is not None and num_live >= max_queued_requests:
        raise CapacityError(
            f"{num_live} requests are queued or running, the most this server takes "
            f"(--max-queued-requests {max_queued_requests}); retry later")
