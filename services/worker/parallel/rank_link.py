"""The link from rank 0 of a tensor-parallel group to each follower: one pipe of byte messages.

LAUNCH + a plan's protobuf encoding (the mesh's own wire format, never a pickle); FINISH (finish
the oldest launched step); READY (follower to rank 0, once its share of the model is loaded).
The pipe's end means "leave" one way and "gone" the other.
"""

from __future__ import annotations

from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.step import StepPlan
from radixmesh.shared.wire import plan_from_proto, plan_to_proto

LAUNCH, FINISH, READY = b"L", b"F", b"ready"


def launch_message(plan: StepPlan) -> bytes:
    return LAUNCH + plan_to_proto(plan).SerializeToString()


def plan_of(message: bytes) -> StepPlan:
    """The plan of a LAUNCH message."""
    return plan_from_proto(internal_pb2.StepPlan.FromString(message[len(LAUNCH):]))
