"""The multi-node CPU stack brought up for real (compose.multinode.cpu.yaml +
compose.multinode.ci.yaml) from the image test_compose_stack.py's step built: both nodes
register in Redis, and one request goes through the router and back.

Run by compose/ci.sh after the single-node stack (which frees the same host ports on its
way down); skipped elsewhere unless RADIXMESH_COMPOSE_TESTS=1, and skipped while the
installed radixmesh (the image is built from the same checkout) lacks a service or flag the
files use.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import yaml

from radixmesh.bench.span_receiver import SpanReceiver
from tests.compose.compose_cli import (
    MULTI_CI_FILE,
    MULTI_CPU_FILE,
    ComposeProject,
    compose_command,
)
from tests.compose.test_compose_stack import _port_taken, _skip_reason
from tests.deploy.local_pods import unsupported_flags

PROJECT = "radixmesh-ci-multinode"
NODES = ("node-a", "node-b")
SERVING = {"redis", "front-door",
           *(f"{node}-{name}" for node in NODES
             for name in ("hicache", "worker", "detokenizer", "scheduler", "tokenizer"))}
HOST_PORTS = (6379, 4317, 30000, 30001, *(base + offset for base in (30100, 30200)
                                          for offset in (0, 1, 10, 20, 21, 30, 40, 41)))
BRING_UP_TIMEOUT_S = 420.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _not_built_yet() -> str | None:
    services = yaml.safe_load(MULTI_CPU_FILE.read_text())["services"]
    commands = [services["router"]["command"], services["node-a-tokenizer"]["command"]]
    missing = sorted({reason for reason in map(unsupported_flags, commands) if reason})
    return "; ".join(missing) or None


@pytest.fixture(scope="module")
def stack() -> Iterator[ComposeProject]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    missing = _not_built_yet()
    if missing:
        pytest.skip(f"the multi-node files need what is not built yet: {missing}")
    taken = [port for port in HOST_PORTS if _port_taken(port)]
    assert not taken, f"host ports the stack needs are in use: {taken}"
    receiver = SpanReceiver("127.0.0.1:4317").start()  # Jaeger's stand-in, as single-node
    project = ComposeProject(PROJECT, (MULTI_CPU_FILE, MULTI_CI_FILE), compose_command())
    try:
        with project.brought_up(SERVING, BRING_UP_TIMEOUT_S):
            yield project
    finally:
        receiver.stop()


def test_both_nodes_register(stack: ComposeProject) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    for node, port in zip(NODES, (30101, 30201), strict=True):
        registration = client.hgetall(f"radixmesh:node:{node}")
        assert registration.get("node_id") == node, registration
        assert registration["address"] == f"{node}-tokenizer:{port}"


def test_request_through_the_router(stack: ComposeProject) -> None:
    from openai import OpenAI

    client = OpenAI(base_url="http://127.0.0.1:30000/v1", api_key="none", max_retries=0,
                    timeout=60)
    chat = client.chat.completions.create(model="tiny-llama", max_tokens=8, messages=[
        {"role": "user", "content": "Hello, two nodes"}])
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens >= 1
