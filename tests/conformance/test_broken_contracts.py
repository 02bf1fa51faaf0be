"""The suites fail, with a FAIL line naming the check, against services that break the
contract; and `--list` documents every check."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from radixmesh import cli
from radixmesh.conformance import detokenizer, hicache, scheduler, worker
from radixmesh.services.worker.servicer import worker_hello
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.step import WorkerInfo
from tests.mesh.conftest import ServiceStarter

from .conftest import run_suite

INFO = WorkerInfo("tiny", num_pages=64, page_size=1, context_len=2048, vocab_size=512,
                  eos_token_ids=(1,), kv_dtype="none", max_running_requests=8, worker="fake")


class WrongProtocolWorker(internal_pb2_grpc.WorkerServicer):
    """A worker from the future: it answers Hello with protocol 99, and serves no step."""

    def Hello(self, request: internal_pb2.PeerHello,
              context: grpc.ServicerContext) -> internal_pb2.PeerHello:
        return internal_pb2.PeerHello(**{**worker_hello(INFO).fields(), "protocol_version": 99})

    def GetInfo(self, request: common_pb2.Empty,
                context: grpc.ServicerContext) -> internal_pb2.WorkerInfo:
        return wire.worker_info_to_proto(INFO)


@pytest.fixture
def wrong_protocol_worker() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    internal_pb2_grpc.add_WorkerServicer_to_server(WrongProtocolWorker(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_wrong_protocol_version_fails(wrong_protocol_worker: str):
    run = run_suite("worker", wrong_protocol_worker, timeout=5)
    assert run.returncode == 1, run.output
    assert any(line.startswith("FAIL hello:") and "protocol 99" in line
               for line in run.failures), run.output
    assert "PASS get_info" in run.passes, run.output  # its info is sane: only Hello breaks
    assert any(line.startswith("FAIL prefill_decode_release:") for line in run.failures)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_worker_suite_fails_against_a_detokenizer(services: ServiceStarter,
                                                  mesh_model_path: Path):
    detokenizer_service = services.start("detokenizer", "--model-path", str(mesh_model_path))
    run = run_suite("worker", detokenizer_service.address, timeout=5)
    assert run.returncode == 1, run.output
    assert len(run.failures) == len(worker.CHECKS), run.output
    assert "UNIMPLEMENTED" in run.output


def test_nothing_listening_fails():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nobody answers there
    run = run_suite("hicache", f"127.0.0.1:{port}", timeout=2)
    assert run.returncode == 1 and len(run.failures) == len(hicache.CHECKS), run.output


def test_list_documents_every_check(capsys: pytest.CaptureFixture[str]):
    for suite, name in ((worker, "worker"), (detokenizer, "detokenizer"),
                        (scheduler, "scheduler"), (hicache, "hicache")):
        assert cli.main(["conformance", name, "--list"]) == 0
        listed = capsys.readouterr().out
        for check in suite.CHECKS:
            assert check.__doc__, check
            assert check.__name__.removeprefix("check_") in listed
