"""Two real meshes (`--node-id node-a` and `node-b`) sharing one real Redis, node B fetching
the pages of prompts node A served (issue 20): B's greedy fp32 output is A's (which computed
them from scratch, as any mesh without the index does), B counts the fetched tokens in
`cached_tokens_total{tier="remote"}` and computes at most half of those prompts; a page whose
bytes rotted on A is rejected and recomputed; with A killed after its entries were written,
B recomputes within the fetch deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from radixmesh.client import AsyncClient
from radixmesh.make_model import make_model
from radixmesh.services.hicache.storage.page_file import read_page_file
from radixmesh.shared.page_keys import page_keys
from tests.hicache.l3_files import namespace_root
from tests.hicache.mesh_runs import (
    GREEDY,
    PAGE_SIZE,
    TIERED_FLAGS,
    TieredMesh,
    Turn,
    samples,
    scrape,
    tier_totals,
    wait_idle,
)
from tests.hicache.redis_server import NEEDS_REDIS, RedisServer
from tests.hicache.test_redis_index_mesh import (
    PROMPT_TOKENS,
    Nodes,
    prompts,
    remote_pages,
    serve,
    wait_remote,
)
from tests.mesh.conftest import free_port, start_mesh

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300),
              NEEDS_REDIS]
FETCH_DEADLINE_S = 3.0
FULL_PAGES = (PROMPT_TOKENS - 1) // PAGE_SIZE  # the last token is always computed


@contextmanager
def node(model: Path, l3_dir: Path, redis: RedisServer, node_id: str) -> Iterator[TieredMesh]:
    """A tiered mesh in the index; unlike `tiered_mesh`, it may be killed by a test."""
    port = free_port()
    with start_mesh(model, *TIERED_FLAGS, "--hicache-storage-dir", str(l3_dir),
                    "--hicache-metrics-port", str(port), "--node-id", node_id,
                    "--hicache-redis-url", redis.url(), "--hicache-redis-key-prefix",
                    "fetch-test:", "--hicache-redis-timeout", "2", "--hicache-redis-ttl", "30",
                    "--hicache-remote-timeout", str(FETCH_DEADLINE_S),
                    worker="model") as mesh:
        yield TieredMesh(mesh, f"http://127.0.0.1:{port}/metrics", l3_dir)


@pytest.fixture(scope="module")
def nodes(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("remote-fetch")
    model = make_model(root / "llama", "llama")
    with ExitStack() as stack:
        meshes = [stack.enter_context(node(model, root / f"l3-{name}", redis_server, name))
                  for name in ("node-a", "node-b")]
        yield Nodes(*meshes, redis_server)


@dataclass(frozen=True)
class Served:
    turns: list[Turn]
    tiers: dict[str, float]  # prompt tokens served from each tier meanwhile
    hicache: dict[str, float]  # B's hicache samples after
    seconds: float

    @property
    def computed(self) -> int:
        return sum(len(turn.prompt) - turn.cached_tokens for turn in self.turns)


def serve_b(nodes: Nodes, batch: Sequence[Sequence[int]], policy: str) -> Served:
    """Each prompt in turn on B, greedy, with the request's `hicache_remote_policy`."""
    before = tier_totals(nodes.b.mesh)

    async def send() -> list[Turn]:
        async with AsyncClient(nodes.b.mesh.grpc_address) as client:
            turns = []
            for prompt in batch:
                done = await client.complete(input_ids=list(prompt), **GREEDY,
                                             hicache_remote_policy=policy)
                cached = done.usage["prompt_tokens_details"]["cached_tokens"]
                turns.append(Turn(-1, 0, tuple(prompt), tuple(done.token_ids), cached))
            return turns
    started = time.monotonic()
    turns = asyncio.run(send())
    seconds = time.monotonic() - started
    wait_idle(nodes.b.mesh)
    after = tier_totals(nodes.b.mesh)
    tiers = {tier: value - before.get(tier, 0.0) for tier, value in after.items()}
    return Served(turns, tiers, samples(scrape(nodes.b.hicache_metrics_url)), seconds)


def served_by_a(nodes: Nodes, seed: int) -> tuple[list[list[int]], list[tuple[int, ...]]]:
    """New prompts A serves, and its outputs, once B sees all their pages on A."""
    batch = prompts(seed)
    outputs = serve(nodes.a, batch)
    for prompt in batch:
        wait_remote(nodes, prompt)
    return batch, outputs


def kill_hard(pid: int) -> None:
    """SIGKILL to `up` and then to the services it started (each in a session of its own):
    no one withdraws A's index entries, as after a crash of the machine."""
    children = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and _parent(entry) == pid]
    os.kill(pid, signal.SIGKILL)
    for child in children:
        with suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _parent(proc_dir: Path) -> int:
    try:  # "pid (name) state ppid ...": the name may hold spaces, so split after its ')'
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def wait_file(path: Path, timeout_s: float = 30.0) -> Path:
    """`path` once it exists: stores to L3 run after the request that fetched the pages."""
    give_up = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < give_up, f"{path.name} never reached L3"
        time.sleep(0.05)
    return path


def outputs(served: Served) -> list[tuple[int, ...]]:
    return [turn.output for turn in served.turns]


def test_b_fetches_what_a_served_and_answers_exactly(nodes: Nodes) -> None:
    batch, expected = served_by_a(nodes, 11)
    fetched = serve_b(nodes, batch, "fetch")
    assert outputs(fetched) == expected
    assert fetched.tiers["remote"] == len(batch) * FULL_PAGES * PAGE_SIZE
    assert fetched.computed <= sum(len(prompt) for prompt in batch) / 2
    assert fetched.hicache["radixmesh:hicache_fetched_tokens_total"] >= fetched.tiers["remote"]
    # The fetched pages went on to B's own L3, as checked files a restart of B reads back.
    root = namespace_root(nodes.a.l3_dir)
    for prompt in batch:
        for key in page_keys(root, prompt, PAGE_SIZE)[:FULL_PAGES]:
            path = wait_file(nodes.b.l3_dir / key.hex())
            assert len(read_page_file(path, key, root)) > 0
    # Forced recompute of other prompts A served: nothing fetched, every token computed.
    batch, expected = served_by_a(nodes, 12)
    recomputed = serve_b(nodes, batch, "recompute")
    assert outputs(recomputed) == expected
    assert recomputed.tiers["remote"] == 0
    assert recomputed.computed == sum(len(prompt) for prompt in batch)


def test_a_page_that_fails_its_checksum_is_recomputed(nodes: Nodes) -> None:
    batch, expected = served_by_a(nodes, 13)
    keys = page_keys(namespace_root(nodes.a.l3_dir), batch[0], PAGE_SIZE)
    path = nodes.a.l3_dir / keys[2].hex()
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # the payload only: A serves it with the checksum it was stored with
    path.write_bytes(bytes(raw))
    before = samples(scrape(nodes.b.hicache_metrics_url))
    fetched = serve_b(nodes, batch, "fetch")
    assert outputs(fetched) == expected
    rejected = "radixmesh:hicache_fetch_rejected_pages_total"
    assert fetched.hicache[rejected] == before[rejected] + 1
    # Pages 0-1 of the first prompt came; the others' pages all did.
    assert fetched.tiers["remote"] == (2 + (len(batch) - 1) * FULL_PAGES) * PAGE_SIZE


def test_with_a_killed_b_recomputes_within_the_deadline(nodes: Nodes) -> None:
    """Last in the module: node A stays down (its index entries live on until they expire)."""
    batch, expected = served_by_a(nodes, 14)
    fallbacks = "radixmesh:hicache_fetch_fallbacks_total"
    before = samples(scrape(nodes.b.hicache_metrics_url))
    kill_hard(nodes.a.mesh.process.pid)
    nodes.a.mesh.process.wait()
    assert remote_pages(nodes.b, nodes.a, batch[0])[1] == "node-a"  # its entries outlive it
    fetched = serve_b(nodes, batch, "fetch")
    assert outputs(fetched) == expected
    assert fetched.tiers["remote"] == 0
    assert fetched.hicache[fallbacks] >= before[fallbacks] + 1
    assert fetched.seconds < len(batch) * (FETCH_DEADLINE_S + 5.0)
