"""The CPU stack brought up for real on a Docker engine: compose.cpu.yaml + compose.ci.yaml
(host networking, service names mapped to 127.0.0.1, Redis from the locally made base image),
with an OTLP receiver in this process standing in for Jaeger.

Run by `compose/ci.sh` (CI's compose step), which builds the images first. Elsewhere it is
skipped unless RADIXMESH_COMPOSE_TESTS=1, so the main test run never needs Docker. The tests
share one stack and run in file order: the worker restart comes last.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from radixmesh.bench.span_receiver import SpanReceiver
from tests.compose.compose_cli import (
    CI_FILE,
    CPU_FILE,
    ComposeProject,
    compose_command,
    docker_reachable,
)

PROJECT = "radixmesh-ci"
IMAGE = os.environ.get("RADIXMESH_IMAGE", "radixmesh:cpu")
SERVING = {"redis", "hicache", "worker", "detokenizer", "scheduler", "front-door"}
# What the stack holds on the host's loopback (host networking): Redis, each service's gRPC
# and metrics ports, and Jaeger's OTLP port, which the receiver below takes.
HOST_PORTS = (6379, 4317, 30000, 30001, 30010, 30020, 30021, 30030, 30040, 30041)
OTLP_ADDRESS = "127.0.0.1:4317"  # where compose.ci.yaml's jaeger:4317 lands
HTTP_URL = "http://127.0.0.1:30000"
GRPC_ADDRESS = "127.0.0.1:30001"
BRING_UP_TIMEOUT_S = 300.0
MODEL = "tiny-llama"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _skip_reason() -> str | None:
    if os.environ.get("RADIXMESH_COMPOSE_TESTS") != "1":
        return "brings up the Docker stack: set RADIXMESH_COMPOSE_TESTS=1 (compose/ci.sh does)"
    if not docker_reachable():
        return "no Docker engine reachable (start dockerd; compose/ci.sh does)"
    if compose_command() is None:
        return "no Compose CLI (docker compose / docker-compose) installed"
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        return f"image {IMAGE} is not built (bash compose/build-offline.sh)"
    return None


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def receiver() -> Iterator[SpanReceiver]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    taken = [port for port in HOST_PORTS if _port_taken(port)]
    assert not taken, f"host ports the stack needs are in use: {taken} (a `radixmesh up`?)"
    started = SpanReceiver(OTLP_ADDRESS).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def stack(receiver: SpanReceiver) -> Iterator[ComposeProject]:
    project = ComposeProject(PROJECT, (CPU_FILE, CI_FILE), compose_command())
    with project.brought_up(SERVING, BRING_UP_TIMEOUT_S):
        yield project


def test_every_container_reaches_healthy(stack: ComposeProject) -> None:
    states = stack.containers()
    assert SERVING <= set(states)
    assert all(states[name].health == "healthy" for name in SERVING), states
    model_init = states["model-init"]
    assert (model_init.status, model_init.exit_code) == ("exited", 0)
    assert "jaeger" not in states and "tokenizer" not in states  # parked by compose.ci.yaml


def test_grpc_client_streams_tokens(stack: ComposeProject) -> None:
    from radixmesh.client import Client

    with Client(GRPC_ADDRESS) as client:
        chunks = list(client.generate(text="The quick brown fox", max_new_tokens=16,
                                      temperature=0, ignore_eos=True))
    assert len(chunks) > 1  # streamed, not one reply
    assert sum(len(chunk.token_ids) for chunk in chunks) == 16
    assert chunks[-1].finish["type"] == "length"
    assert chunks[-1].usage["completion_tokens"] == 16


def test_openai_client(stack: ComposeProject) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{HTTP_URL}/v1", api_key="none", max_retries=0, timeout=60)
    chat = client.chat.completions.create(model=MODEL, max_tokens=8, messages=[
        {"role": "user", "content": "Hello"}])
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens >= 1
    stream = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                       stream=True)
    assert sum(1 for _ in stream) >= 2


def test_spans_from_four_services_reach_the_receiver(stack: ComposeProject,
                                                     receiver: SpanReceiver) -> None:
    """One request's trace, as Jaeger would get it: the front door's root and `tokenize`, the
    scheduler's `queue`/`prefill`/`decode`, the detokenizer's `detokenize`, and the worker's
    `worker.step`, a trace of its own that links to the request."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{HTTP_URL}/v1", api_key="none", max_retries=0, timeout=60)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Trace me",
                                                       max_tokens=4)
    trace_id = raw.headers.get("x-trace-id")
    assert trace_id and len(trace_id) == 32, raw.headers

    expected = {("radixmesh-tokenizer", "tokenize"), ("radixmesh-scheduler", "queue"),
                ("radixmesh-scheduler", "prefill"), ("radixmesh-scheduler", "decode"),
                ("radixmesh-detokenizer", "detokenize")}

    def of_request(spans) -> list:
        """The request's own spans and the worker steps that link to it."""
        return [span for span in spans if span.trace_id == trace_id
                or any(linked == trace_id for linked, _ in span.links)]

    def complete(spans) -> bool:
        mine = of_request(spans)
        names = {(span.service, span.name) for span in mine}
        has_root = any(span.trace_id == trace_id and not span.parent_span_id for span in mine)
        return has_root and expected <= names and ("radixmesh-worker", "worker.step") in names

    # Services export in batches, every few seconds at most; the root ends last (after the
    # response is written), so it may arrive in a later batch than its children.
    spans = of_request(receiver.wait_for(complete, timeout=30))
    names = sorted({(span.service, span.name) for span in spans})
    assert len({span.service for span in spans}) >= 4, names
    assert expected <= set(names), names
    steps = [span for span in spans if span.name == "worker.step"]
    assert steps and all(span.trace_id != trace_id for span in steps), names  # linked, own trace
    roots = [span for span in spans if span.trace_id == trace_id and not span.parent_span_id]
    assert [root.service for root in roots] == ["radixmesh-tokenizer"], names


def _generate_ok(timeout: float) -> None:
    """A short generation succeeds, retried for up to `timeout` seconds."""
    from radixmesh.client import Client, RadixMeshClientError

    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            with Client(GRPC_ADDRESS) as client:
                chunks = list(client.generate(text=f"again {secrets.token_hex(4)}",
                                              max_new_tokens=4, ignore_eos=True))
            if sum(len(chunk.token_ids) for chunk in chunks) == 4:
                return
        except RadixMeshClientError as error:
            last = error
        time.sleep(1.0)
    raise AssertionError(f"no successful request within {timeout:.0f}s; last error: {last}")


def test_worker_restart(stack: ComposeProject) -> None:
    """The worker container stopped and started again: the stack serves again, and (design
    §11) the other services should have stayed up throughout."""
    others = SERVING - {"worker"}
    before = stack.containers()
    stack.run("stop", "--timeout", "20", "worker", timeout=120)
    stack.run("start", "worker", timeout=120)
    stack.wait_healthy(SERVING, timeout=BRING_UP_TIMEOUT_S)
    _generate_ok(timeout=120)
    after = stack.containers()
    assert after["worker"].started_at != before["worker"].started_at
    restarted = sorted(name for name in others
                       if (after[name].restart_count, after[name].started_at)
                       != (before[name].restart_count, before[name].started_at))
    # The scheduler waits for its worker and reconnects in place (issue 17): nothing else
    # was restarted, by Docker or by itself.
    assert restarted == [], f"served again, but only after Docker restarted {restarted}"
