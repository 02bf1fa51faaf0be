"""The handshake (shared/mesh_protocol.py): a worker of another model or protocol taking the
lost worker's port is refused with a clear log line, and the mesh stays not ready until the
right one comes; plus the handshake's own rules, without processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from radixmesh.shared.mesh_protocol import (
    MESH_PROTOCOL_VERSION,
    PEER_INSTANCE_KEY,
    PROTOCOL_KEY,
    STREAM_ACK,
    HandshakeError,
    Hello,
    check_peer,
    unavailable_finish,
    unavailable_reason,
)
from radixmesh.shared.protos_gen import internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import FinishKind, FinishReason
from tests.resilience.conftest import SERVING, wait_until
from tests.resilience.conftest import health as health_of
from tests.resilience.test_worker_loss import assert_serves_again

pytestmark = pytest.mark.timeout(300)


class FutureWorker(internal_pb2_grpc.WorkerServicer):
    """A worker from a later release: it answers the hello with protocol 2."""

    def Hello(self, request, context):
        return internal_pb2.PeerHello(**Hello(
            "worker", "future", "some-model", (STREAM_ACK,),
            protocol_version=MESH_PROTOCOL_VERSION + 1).fields())


@contextlib.contextmanager
def future_worker(address: str) -> Iterator[None]:
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    internal_pb2_grpc.add_WorkerServicer_to_server(FutureWorker(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)  # SERVING
    assert server.add_insecure_port(address)
    server.start()
    try:
        yield
    finally:
        server.stop(None)


def test_a_worker_of_another_model_or_protocol_is_refused_and_the_mesh_stays_not_ready(
        mesh_factory, other_model_path: Path):
    mesh = mesh_factory()
    scheduler = mesh["scheduler"]
    mesh["worker"].kill()
    wait_until(lambda: mesh.http_health() == 503, "front door /health 503")

    impostor = mesh.replace("worker", model_path=other_model_path)
    impostor.wait_serving()
    scheduler.wait_logged(f"serves model '{other_model_path}', protocol "
                          f"{MESH_PROTOCOL_VERSION}; this scheduler speaks protocol "
                          f"{MESH_PROTOCOL_VERSION} and was started for '{mesh.model_path}': "
                          "refused (the models differ)")
    assert health_of(scheduler.address) != SERVING and mesh.http_health() == 503
    impostor.kill()

    with future_worker(impostor.address):
        scheduler.wait_logged(f"protocol {MESH_PROTOCOL_VERSION + 1}; this scheduler speaks "
                              f"protocol {MESH_PROTOCOL_VERSION}")
        assert "refused (the protocols differ; the models differ)" in scheduler.output()
        assert health_of(scheduler.address) != SERVING and mesh.http_health() == 503

    mesh.replace("worker", model_path=mesh.model_path)
    assert_serves_again(mesh)


# ---- the rules, in process -------------------------------------------------------------------


def test_check_peer_names_both_sides() -> None:
    scheduler = Hello("scheduler")
    worker = Hello("worker", "null", "/m/a", (STREAM_ACK,), protocol_version=3)
    with pytest.raises(HandshakeError) as refused:
        check_peer(scheduler, worker, "127.0.0.1:5", "worker", "/m/b", (STREAM_ACK,))
    assert str(refused.value) == (
        "worker 'null' at 127.0.0.1:5 serves model '/m/a', protocol 3; this scheduler speaks "
        "protocol 2 and was started for '/m/b': refused (the protocols differ; the models "
        "differ)")
    check_peer(scheduler, Hello("worker", model_id="/m/b", capabilities=(STREAM_ACK,)), "x",
               "worker", "/m/b", (STREAM_ACK,))
    with pytest.raises(HandshakeError, match="it is a detokenizer service, not a worker; "
                                             "it lacks stream-ack"):
        check_peer(scheduler, Hello("detokenizer"), "x", "worker", None, (STREAM_ACK,))


def test_a_stream_is_refused_when_meant_for_another_instance_or_protocol() -> None:
    worker, scheduler = Hello("worker"), Hello("scheduler")
    assert worker.refusal(dict(scheduler.stream_metadata(worker))) is None
    assert worker.refusal({}) is None  # a hand-made client: taken as it is
    restarted = Hello("worker")
    assert "restarted since the hello" in restarted.refusal(
        dict(scheduler.stream_metadata(worker)))
    assert "speaks mesh protocol 7" in worker.refusal({PROTOCOL_KEY: "7",
                                                        PEER_INSTANCE_KEY: worker.instance_id})


def test_hello_survives_its_message() -> None:
    from radixmesh.shared.mesh_protocol import PageLayout
    hello = Hello("worker", "model", "/m", (STREAM_ACK, "host-kv"),
                  PageLayout(16, 32, 8, 128, "bfloat16"))
    assert Hello.from_message(internal_pb2.PeerHello(**hello.fields())) == hello
    bare = Hello("detokenizer")
    assert Hello.from_message(internal_pb2.PeerHello(**bare.fields())) == bare


def test_an_unavailable_finish_is_told_apart_from_an_abort() -> None:
    finish = unavailable_finish("the worker at x is hung")
    assert finish.kind is FinishKind.ABORT
    assert unavailable_reason(finish) == "the worker at x is hung"
    assert unavailable_reason(FinishReason(FinishKind.ABORT, message="aborted")) is None
    assert unavailable_reason(None) is None
