"""The link from rank 0 of a tensor-parallel group to each follower: one pipe of byte messages.

Rank 0 to a follower: LAUNCH + a plan's protobuf encoding (the mesh's own wire format, never a
pickle); FINISH (finish the oldest launched step). A follower to rank 0: READY (its share of the
model is loaded), then after each finished step BACKED_UP + the newest step whose backups to
the host pool are all in place on that rank (rank 0 reports the group's least to the
scheduler, which reuses a host slot's pages only once every rank's part has landed). The
pipe's end means "leave" one way and "gone" the other.
"""

from __future__ import annotations

from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.step import StepPlan
from radixmesh.shared.wire import plan_from_proto, plan_to_proto

LAUNCH, FINISH, READY, BACKED_UP = b"L", b"F", b"ready", b"B"


def launch_message(plan: StepPlan) -> bytes:
    return LAUNCH + plan_to_proto(plan).SerializeToString()


def plan_of(message: bytes) -> StepPlan:
    """The plan of a LAUNCH message."""
    return plan_from_proto(internal_pb2.StepPlan.FromString(message[len(LAUNCH):]))


def backed_up_message(step_id: int) -> bytes:
    return BACKED_UP + step_id.to_bytes(8, "little", signed=True)


def backed_up_of(message: bytes) -> int:
    """The step of a BACKED_UP message."""
    if message[:1] != BACKED_UP:
        raise ValueError(f"unexpected message from a tensor-parallel rank: {message[:8]!r}")
    return int.from_bytes(message[1:], "little", signed=True)
