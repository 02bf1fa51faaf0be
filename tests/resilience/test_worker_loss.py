"""Losing the worker (kill -9, SIGSTOP) with requests in flight, and getting one back: real
processes, through the front door's public gRPC API (issue 17, design §11).

What each test checks, in bounded waits only: the requests in flight end with UNAVAILABLE,
none hangs; the scheduler stays up and reports NOT_SERVING, so does the front door (/health
503, new requests refused at once); a worker started again on the same port is picked up
(SERVING, requests served); the scheduler's page accounting held (it checks it when it loses
the worker, and dies loudly otherwise) and its pool is free once idle.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import grpc
import pytest

from tests.resilience.conftest import (
    SERVING,
    WAIT_S,
    Outcome,
    ResilientMesh,
    generate,
    health,
    run,
    wait_until,
)

pytestmark = pytest.mark.timeout(300)
PROMPT = [5, 6, 7, 8]
LONG = 100_000  # tokens: a null-worker request that lasts far longer than any test step


async def streaming(address: str, count: int, max_new_tokens: int = LONG,
                    prefix: str = "r") -> tuple[list[asyncio.Task], list[asyncio.Event]]:
    """`count` requests started, returned once each has streamed a first token."""
    firsts = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(generate(address, f"{prefix}{i}", PROMPT, max_new_tokens,
                                          first))
             for i, first in enumerate(firsts)]
    await asyncio.wait_for(asyncio.gather(*(first.wait() for first in firsts)), WAIT_S)
    return tasks, firsts


def streams_cut_by(address: str, fault: Callable[[], object], count: int = 3) -> list[Outcome]:
    """`count` requests streaming when `fault` strikes (a kill, a SIGSTOP); how each ended."""
    async def scenario() -> list[Outcome]:
        running, _ = await streaming(address, count)
        fault()
        return await asyncio.wait_for(asyncio.gather(*running), WAIT_S)
    return run(scenario())


def assert_unavailable(outcomes: list[Outcome]) -> None:
    for outcome in outcomes:
        assert outcome.code is grpc.StatusCode.UNAVAILABLE, outcome
        assert 0 < len(outcome.tokens) < LONG


def assert_mesh_not_ready(mesh: ResilientMesh) -> None:
    wait_until(lambda: health(mesh["scheduler"].address) != SERVING, "scheduler NOT_SERVING")
    wait_until(lambda: mesh.http_health() == 503, "front door /health 503")
    refused = run(generate(mesh["tokenizer"].address, "while-down", PROMPT, 4))
    assert refused.code is grpc.StatusCode.UNAVAILABLE, refused


def assert_serves_again(mesh: ResilientMesh, expected_worker: str = "null") -> Outcome:
    mesh["scheduler"].wait_serving(WAIT_S)
    wait_until(lambda: mesh.http_health() == 200, "front door /health 200")
    done = run(generate(mesh["tokenizer"].address, "after", PROMPT, 8))
    assert done.code is None and done.finish == "length" and len(done.tokens) == 8, done
    assert mesh["scheduler"].alive
    mesh["scheduler"].wait_logged(f"worker {expected_worker!r}")
    mesh.wait_idle()
    return done


def test_a_killed_worker_fails_running_requests_keeps_queued_ones_and_is_picked_up_again(
        mesh_factory):
    # Two run, two wait: the waiting ones must survive the loss and finish on the new worker.
    mesh = mesh_factory(scheduler_flags=("--max-running-requests", "2"))
    front_door = mesh["tokenizer"].address

    async def scenario() -> tuple[list[Outcome], list[Outcome]]:
        running, _ = await streaming(front_door, 2)
        queued = [asyncio.create_task(generate(front_door, f"q{i}", PROMPT, 16))
                  for i in range(2)]
        await asyncio.to_thread(wait_until, lambda: mesh.scheduler_load().num_queue_reqs == 2,
                                "two requests queued")
        mesh["worker"].kill()
        failed = await asyncio.wait_for(asyncio.gather(*running), WAIT_S)
        await asyncio.to_thread(assert_mesh_not_ready, mesh)
        mesh.replace("worker")
        finished = await asyncio.wait_for(asyncio.gather(*queued), WAIT_S)
        return failed, finished

    failed, finished = run(scenario())
    assert_unavailable(failed)
    for outcome in finished:  # queued across the loss, served by the new worker
        assert outcome.code is None and len(outcome.tokens) == 16, outcome
    assert_serves_again(mesh)
    log = mesh["scheduler"].output()
    assert "2 running requests failed with UNAVAILABLE, page accounting checked" in log
    assert "2 queued requests carried over" in log


def test_a_worker_of_the_other_implementation_is_picked_up(mesh_factory):
    mesh = mesh_factory()
    mesh["worker"].kill()
    mesh.replace("worker", "--device", "cpu", "--max-total-tokens", "512", worker="model")
    assert_serves_again(mesh, expected_worker="model")
    # And back: the scheduler rebuilds itself for each worker's pool.
    mesh["worker"].kill()
    wait_until(lambda: health(mesh["scheduler"].address) != SERVING, "scheduler NOT_SERVING")
    mesh.replace("worker", worker="null")
    assert_serves_again(mesh, expected_worker="null")


def test_a_stopped_worker_fails_requests_within_the_step_timeout_and_serves_after_sigcont(
        mesh_factory):
    mesh = mesh_factory(scheduler_flags=("--worker-step-timeout", "2"))
    front_door = mesh["tokenizer"].address

    try:
        failed = streams_cut_by(front_door, lambda: mesh["worker"].signal(signal.SIGSTOP))
        assert_unavailable(failed)
        mesh["scheduler"].wait_logged("is hung: no result for step")
        assert_mesh_not_ready(mesh)
    finally:
        mesh["worker"].signal(signal.SIGCONT)
    assert_serves_again(mesh)


def test_a_stopped_idle_worker_is_noticed_by_keepalive(mesh_factory):
    """No step in flight, so no watchdog: the channel's keepalive (~10 s) must tell."""
    mesh = mesh_factory()
    mesh["worker"].signal(signal.SIGSTOP)
    try:
        wait_until(lambda: health(mesh["scheduler"].address) != SERVING,
                   "scheduler NOT_SERVING")
        wait_until(lambda: mesh.http_health() == 503, "front door /health 503")
        assert mesh.http_health("/health_generate", timeout=30) == 503
    finally:
        mesh["worker"].signal(signal.SIGCONT)
    assert_serves_again(mesh)
    assert mesh.http_health("/health_generate", timeout=30) == 200
