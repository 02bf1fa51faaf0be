"""kill -9 of the detokenizer with requests in flight, then the same detokenizer started again
on its port: real processes, through the front door (issue 17)."""

from __future__ import annotations

import signal

import grpc
import pytest

from tests.resilience.conftest import SERVING, generate, health, run, wait_until
from tests.resilience.test_worker_loss import LONG, PROMPT, assert_serves_again, streams_cut_by

pytestmark = pytest.mark.timeout(300)


def test_a_killed_detokenizer_fails_requests_in_flight_and_a_restarted_one_serves(
        mesh_factory):
    mesh = mesh_factory()
    front_door = mesh["tokenizer"].address

    for outcome in streams_cut_by(front_door, lambda: mesh["detokenizer"].kill()):
        assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome
        assert 0 < len(outcome.tokens) < LONG
    wait_until(lambda: health(mesh["scheduler"].address) != SERVING, "scheduler NOT_SERVING")
    wait_until(lambda: mesh.http_health() == 503, "front door /health 503")
    refused = run(generate(front_door, "while-down", PROMPT, 4))
    assert refused.code is grpc.StatusCode.UNAVAILABLE, refused
    mesh["scheduler"].wait_logged("detokenizer lost")
    assert mesh["scheduler"].alive
    mesh.wait_idle()  # every request ended there too, its pages freed

    mesh.replace("detokenizer")
    assert_serves_again(mesh)


def test_a_stopped_detokenizer_fails_requests_in_flight_and_serves_after_sigcont(mesh_factory):
    """No stream breaks: only keepalive (and the scheduler's publish timeout) can tell."""
    mesh = mesh_factory()
    front_door = mesh["tokenizer"].address

    try:
        for outcome in streams_cut_by(front_door, lambda: mesh["detokenizer"].signal(signal.SIGSTOP)):
            assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome
        wait_until(lambda: mesh.http_health() == 503, "front door /health 503")
        mesh["scheduler"].wait_logged("detokenizer lost")
    finally:
        mesh["detokenizer"].signal(signal.SIGCONT)
    assert_serves_again(mesh)
