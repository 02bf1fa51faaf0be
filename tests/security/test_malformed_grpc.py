"""Malformed gRPC requests, table-driven: every case ends INVALID_ARGUMENT naming the field at
fault, never UNKNOWN, and the mesh serves a normal request afterwards (issue 18).

Bytes that are not a valid message go out raw (an identity serializer); well-formed messages
with bad values through the generated stub. All run against the security tests' mesh
(`conftest.py`), with its key.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from radixmesh.shared.protos_gen import common_pb2, generate_pb2, generate_pb2_grpc
from tests.mesh.conftest import MeshProcess
from tests.security.keyed_mesh import KEYS

pytestmark = pytest.mark.timeout(60)
AUTH = (("authorization", f"Bearer {KEYS[0]}"),)
SERVICE = "/radixmesh.v1.Generation/"
Request = generate_pb2.GenerateRequest
Sampling = common_pb2.SamplingParams


def ld(number: int, payload: bytes) -> bytes:
    """One length-delimited field."""
    return bytes([number << 3 | 2, len(payload)]) + payload


def chat(*messages: tuple[str, str]) -> generate_pb2.ChatMessages:
    return generate_pb2.ChatMessages(messages=[generate_pb2.ChatMessage(role=role, content=text)
                                               for role, text in messages])


@dataclass(frozen=True)
class Case:
    method: str              # a method of Generation
    request: object          # bytes sent raw, or a message
    field: str               # the field the status details must name

    def raw(self) -> bytes:
        return self.request if isinstance(self.request, bytes) else \
            self.request.SerializeToString()


def gen(request: object, field: str) -> Case:
    return Case("Generate", request, field)


def sampled(field: str, **sampling: object) -> Case:
    return gen(Request(text="hi", sampling=Sampling(**sampling)), field)


CASES = [
    # ---- bytes that do not decode
    gen(b"\xff\xff\xff", "request"), gen(b"\x0a\x05ab", "request"),
    gen(ld(1, b"\xff\xfe"), "rid"), gen(ld(2, b"caf\xc3"), "text"),
    gen(ld(2, b"hi") + ld(5, ld(7, b"\xc3\x28")), "sampling.stop[0]"),
    gen(ld(4, ld(1, ld(1, b"user") + ld(2, b"\xff"))), "messages.messages[0].content"),
    gen(ld(4, ld(1, ld(1, b"\xfe") + ld(2, b"x"))), "messages.messages[0].role"),
    gen(ld(2, b"hi") + ld(6, ld(1, b"\xff")), "trace.traceparent"),
    gen(ld(3, ld(1, b"\xff\xff")), "input_ids"),
    # ---- fields this API version does not declare, or sent with another wire type
    gen(ld(2, b"hi") + b"\x78\x05", "<field 15>"), gen(b"\x08\x05" + ld(2, b"hi"), "rid"),
    gen(ld(2, b"hi") + ld(5, b"\x98\x06\x01"), "sampling.<field 99>"),
    gen(ld(4, ld(1, ld(1, b"user") + ld(2, b"x") + ld(3, b"?"))), "messages.messages[0].<field 3>"),
    Case("Abort", b"\xff\xff", "request"), Case("Abort", ld(1, b"\xff"), "rid"),
    Case("Abort", ld(1, b"r") + b"\x10\x01", "<field 2>"),
    Case("GetModelInfo", b"\x08\x01", "<field 1>"), Case("GetModelInfo", b"\x0a\x09", "request"),
    Case("GetServerInfo", b"\x08\x01", "<field 1>"), Case("FlushCache", b"\x0a\x09", "request"),
    # ---- the prompt
    gen(Request(), "prompt"), gen(Request(text=""), "text"),
    gen(Request(input_ids=generate_pb2.TokenIds()), "input_ids"),
    gen(Request(input_ids=generate_pb2.TokenIds(ids=[-1])), "input_ids"),
    gen(Request(input_ids=generate_pb2.TokenIds(ids=[10**9])), "input_ids"),
    gen(Request(messages=chat()), "messages"),
    gen(Request(messages=chat(("hacker", "x"))), "messages[0].role"),
    gen(Request(messages=chat(("", "x"))), "messages[0].role"),
    gen(Request(messages=chat(("user", "x"), ("tool", "y"))), "messages[1].role"),
    gen(Request(rid="a\nb", text="hi"), "rid"), gen(Request(rid="r" * 300, text="hi"), "rid"),
    # ---- sampling
    sampled("max_new_tokens", max_new_tokens=0), sampled("max_new_tokens", max_new_tokens=-1),
    sampled("max_new_tokens", max_new_tokens=10**6), sampled("temperature", temperature=-1),
    sampled("temperature", temperature=float("nan")),
    sampled("temperature", temperature=float("inf")), sampled("top_p", top_p=0),
    sampled("top_p", top_p=2), sampled("top_k", top_k=-5), sampled("min_p", min_p=1.5),
    sampled("seed", seed=2**63), sampled("stop", stop=[""]), sampled("stop", stop=["x"] * 17),
    sampled("stop", stop=["x" * 300]), sampled("stop_token_ids", stop_token_ids=[-1]),
    sampled("stop_token_ids", stop_token_ids=[1] * 65),
    sampled("frequency_penalty", frequency_penalty=5),
    sampled("presence_penalty", presence_penalty=-5),
    sampled("repetition_penalty", repetition_penalty=0),
    # ---- Abort's id
    Case("Abort", generate_pb2.AbortRequest(), "rid"),
    Case("Abort", generate_pb2.AbortRequest(rid="a\x00b"), "rid"),
]


def case_id(case: Case) -> str:
    shown = case.request if isinstance(case.request, bytes) else \
        str(case.request).replace("\n", " ")
    return f"{case.method}:{shown!r}"[:70]


@pytest.fixture(scope="module")
def channel(keyed_mesh: MeshProcess):
    with grpc.insecure_channel(keyed_mesh.grpc_address) as opened:
        yield opened


def call(channel: grpc.Channel, case: Case) -> None:
    """Sends the case's bytes as they are; raises the call's RpcError."""
    identity = {"request_serializer": None, "response_deserializer": None}
    if case.method == "Generate":
        for _ in channel.unary_stream(SERVICE + case.method, **identity)(
                case.raw(), metadata=AUTH, timeout=30):
            pass
    else:
        channel.unary_unary(SERVICE + case.method, **identity)(case.raw(), metadata=AUTH,
                                                               timeout=30)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_malformed_request_ends_invalid_argument_naming_the_field(
        case: Case, channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        call(channel, case)
    assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT, failed.value.details()
    assert failed.value.details().startswith(case.field + ":"), failed.value.details()


def test_without_a_key_a_malformed_request_is_unauthenticated(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        channel.unary_unary(SERVICE + "Abort")(b"\xff\xff", timeout=30)
    assert failed.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_the_mesh_serves_a_normal_request_afterwards(channel: grpc.Channel) -> None:
    stub = generate_pb2_grpc.GenerationStub(channel)
    replies = list(stub.Generate(Request(text="hello", sampling=Sampling(max_new_tokens=3)),
                                 metadata=AUTH, timeout=30))
    assert sum(len(reply.token_ids) for reply in replies) == 3
    assert replies[-1].finish.type == "length"
