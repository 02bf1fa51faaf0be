"""kill -9 of the scheduler with requests in flight, then a scheduler started again on its
port: the front door, worker and detokenizer stay up and take the new one (issue 17)."""

from __future__ import annotations

import grpc
import pytest

from tests.resilience.conftest import generate, run, wait_until
from tests.resilience.test_worker_loss import LONG, PROMPT, assert_serves_again, streams_cut_by

pytestmark = pytest.mark.timeout(300)


def test_a_killed_scheduler_fails_requests_in_flight_and_a_restarted_one_is_taken(
        mesh_factory):
    mesh = mesh_factory()
    front_door = mesh["tokenizer"].address

    for outcome in streams_cut_by(front_door, lambda: mesh["scheduler"].kill()):
        assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome
        assert 0 < len(outcome.tokens) < LONG
    wait_until(lambda: mesh.http_health() == 503, "front door /health 503")
    refused = run(generate(front_door, "while-down", PROMPT, 4))
    assert refused.code is grpc.StatusCode.UNAVAILABLE, refused

    mesh.replace("scheduler")
    assert_serves_again(mesh)
    for name in ("worker", "detokenizer", "tokenizer"):
        assert mesh[name].alive, name
    # The worker released what the dead scheduler's stream left registered.
    mesh["worker"].wait_logged("an earlier Execute stream left registered")
