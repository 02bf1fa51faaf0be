"""Multi-turn conversations through a real `radixmesh up`, and what the mesh says about them:
the helpers of `test_mesh_tiers.py`.

Conversations run one request at a time, round-robin (round r of every conversation, then
round r + 1), so every run batches alike, whatever the cache does, and each conversation's
history has left the device pool by the time it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from radixmesh.bench.multiturn_report import tier_counters
from radixmesh.client import AsyncClient
from tests.mesh.conftest import MeshProcess, free_port, start_mesh

PAGE_SIZE = 4
NUM_CONVERSATIONS = 4
NUM_ROUNDS = 4
NEW_TOKENS = 40
OUTPUT_TOKENS = 16
GREEDY = {"temperature": 0.0, "ignore_eos": True, "max_new_tokens": OUTPUT_TOKENS}
# fp32 on CPU, pages of 4 tokens, a device pool of 300 tokens (75 pages): 4 conversations of 4
# rounds reach 4 x 224 tokens, 3x the pool, so histories leave the device and come back.
BASE_FLAGS = ("--device", "cpu", "--dtype", "float32", "--page-size", str(PAGE_SIZE),
              "--max-total-tokens", "300")
# L2 twice the device pool (the default): it overflows too (4 x 224 tokens), so pages need
# L3. Prefetch from 2 pages on, and requests wait for it, so L3 hits do not hang on timing.
TIERED_FLAGS = (*BASE_FLAGS, "--enable-hierarchical-cache",
                "--hicache-storage-backend", "file", "--hicache-prefetch-threshold", "8",
                "--hicache-prefetch-policy", "wait_complete")
SETTLE_S = 0.5  # for the copies of a finished step to go out and the idle check to run
IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Turn:
    conversation: int
    round: int
    prompt: tuple[int, ...]
    output: tuple[int, ...]
    cached_tokens: int


@dataclass(frozen=True)
class Run:
    """One pass over the conversations, the mesh's counters over it, and one more request at
    idle after it (the scheduler checks its page accounting per tier at idle, and a failed
    check ends it, and so the mesh: `alive` says the mesh outlived both)."""

    turns: list[Turn]
    tiers: dict[str, float]   # prompt tokens served from each tier during the run
    hicache: dict[str, float]  # the hicache service's samples after the run ({} without one)
    followup: Turn
    alive: bool

    @property
    def outputs(self) -> dict[tuple[int, int], tuple[int, ...]]:
        return {(turn.conversation, turn.round): turn.output for turn in self.turns}

    @property
    def conversations(self) -> list[tuple[int, ...]]:
        """Each conversation's whole token sequence (its last prompt and output)."""
        last = [turn for turn in self.turns if turn.round == NUM_ROUNDS]
        return [turn.prompt + turn.output for turn in sorted(last, key=lambda t: t.conversation)]

    @property
    def computed_prefill(self) -> int:
        """Prompt tokens the model computed rather than read from a cache."""
        return sum(len(turn.prompt) - turn.cached_tokens for turn in self.turns)


@dataclass
class TieredMesh:
    mesh: MeshProcess
    hicache_metrics_url: str
    l3_dir: Path


def new_tokens(vocab_size: int, conversation: int, round_: int) -> list[int]:
    """The user's tokens of one round: the same for every run of the tests."""
    draw = random.Random(1000 * conversation + round_)
    return [draw.randrange(3, vocab_size) for _ in range(NEW_TOKENS)]


async def complete(client: AsyncClient, prompt: Sequence[int], conversation: int = -1,
                   round_: int = 0) -> Turn:
    done = await client.complete(input_ids=list(prompt), **GREEDY)
    assert done.finish is not None and done.finish["type"] == "length", done.finish
    cached = done.usage["prompt_tokens_details"]["cached_tokens"]
    return Turn(conversation, round_, tuple(prompt), tuple(done.token_ids), cached)


async def _talk(address: str) -> list[Turn]:
    async with AsyncClient(address) as client:
        vocab_size = (await client.model_info()).vocab_size
        histories: list[list[int]] = [[] for _ in range(NUM_CONVERSATIONS)]
        turns = []
        for round_ in range(1, NUM_ROUNDS + 1):
            for conversation, history in enumerate(histories):
                history += new_tokens(vocab_size, conversation, round_)
                turn = await complete(client, history, conversation, round_)
                history += turn.output
                turns.append(turn)
        return turns


def converse(mesh: MeshProcess, hicache_metrics_url: str | None = None) -> Run:
    """Runs every conversation through `mesh`; the counters are read once it is idle."""
    before = tier_totals(mesh)
    turns = asyncio.run(_talk(mesh.grpc_address))
    wait_idle(mesh)
    tiers = tiers_since(mesh, before)
    hicache = samples(scrape(hicache_metrics_url)) if hicache_metrics_url else {}
    followup = resend(mesh, turns[0])
    wait_idle(mesh)
    return Run(turns, tiers, hicache, followup, mesh.process.poll() is None)


def resend(mesh: MeshProcess, turn: Turn) -> Turn:
    """`turn`'s prompt once more (greedy: the same output is due)."""
    async def send() -> Turn:
        async with AsyncClient(mesh.grpc_address) as client:
            return await complete(client, turn.prompt, turn.conversation, turn.round)
    return asyncio.run(send())


# ---- requests ended midway ------------------------------------------------------------------

# How each request of `end_midway` ends, in the order they are sent: after this many output
# tokens, by leaving its stream (the client cancels the call, and the server aborts the
# request) or by the Abort RPC; 0: the same QUEUED_S after it was sent, while it still queues
# behind the ones before it; None: it runs to the end. The mesh may stream faster than a busy
# client reads, so a request can finish before its ending lands: a long output makes that rare.
ENDINGS = ((1, "cancel"), (2, "abort"), (4, "cancel"), (8, "abort"), (None, "-"),
           (3, "cancel"), (0, "abort"), (0, "cancel"))
MIDWAY_SAMPLING = {**GREEDY, "max_new_tokens": 48}
QUEUED_S = 0.2


async def _read(client: AsyncClient, prompt: Sequence[int], rid: str, stop_after: int | None,
                by_abort: bool) -> None:
    received = 0
    async with contextlib.aclosing(client.generate(input_ids=list(prompt), rid=rid,
                                                   **MIDWAY_SAMPLING)) as stream:
        async for chunk in stream:
            received += len(chunk.token_ids)
            if stop_after is not None and received >= stop_after:
                if not by_abort:
                    return  # aclosing cancels the call now
                await client.abort(rid)
                stop_after = None  # read on to the finish the abort brings


async def _end(client: AsyncClient, prompt: Sequence[int], stop_after: int | None,
               how: str) -> None:
    rid = uuid.uuid4().hex
    if stop_after != 0:
        await _read(client, prompt, rid, stop_after, how == "abort")
        return
    task = asyncio.ensure_future(_read(client, prompt, rid, None, False))
    await asyncio.sleep(QUEUED_S)
    if how == "abort":
        await client.abort(rid)
    else:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def end_midway(mesh: MeshProcess, prompts: Sequence[Sequence[int]]) -> None:
    """Sends every prompt at once and ends them as ENDINGS says, in that order."""
    async def send() -> None:
        async with AsyncClient(mesh.grpc_address) as client:
            await asyncio.gather(*(_end(client, prompt, *ending)
                                   for prompt, ending in zip(prompts, ENDINGS, strict=True)))
    asyncio.run(send())


# ---- what the mesh says ------------------------------------------------------------------


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5.0) as response:  # 127.0.0.1 only
        return response.read().decode()


def tier_totals(mesh: MeshProcess) -> dict[str, float]:
    """Prompt tokens served from each tier since the mesh started."""
    return tier_counters(scrape(f"{mesh.http_url}/metrics"))


def tiers_since(mesh: MeshProcess, before: dict[str, float]) -> dict[str, float]:
    return {tier: value - before.get(tier, 0.0) for tier, value in tier_totals(mesh).items()}


def samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus exposition labelled by nothing but its model, by name
    (counters end in _total)."""
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if set(sample.labels) <= {"model_name"}}


def aborted_requests(mesh: MeshProcess) -> float:
    """Requests the front door finished as aborted since the mesh started."""
    return sum(sample.value for family in text_string_to_metric_families(
        scrape(f"{mesh.http_url}/metrics")) for sample in family.samples
        if sample.name == "radixmesh:num_requests_total"
        and sample.labels.get("finish_reason") == "abort")


def wait_idle(mesh: MeshProcess) -> None:
    """Until the scheduler runs and queues nothing, then a moment more: the scheduler checks
    its page accounting per tier once its last step is back, and a failed check ends it."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while True:
        load = samples(scrape(f"{mesh.http_url}/metrics"))
        if load["radixmesh:num_running_reqs"] == load["radixmesh:num_queue_reqs"] == 0:
            break
        assert time.monotonic() < deadline, f"the mesh is not idle after {IDLE_TIMEOUT_S}s"
        time.sleep(0.1)
    time.sleep(SETTLE_S)


@contextlib.contextmanager
def tiered_mesh(model: Path, l3_dir: Path, *flags: str) -> Iterator[TieredMesh]:
    """A mesh with the hierarchical cache over `l3_dir`, its hicache /metrics on a free port."""
    port = free_port()
    with start_mesh(model, *TIERED_FLAGS, "--hicache-storage-dir", str(l3_dir),
                    "--hicache-metrics-port", str(port), *flags, worker="model") as mesh:
        yield TieredMesh(mesh, f"http://127.0.0.1:{port}/metrics", l3_dir)
        assert mesh.process.poll() is None, f"the mesh ended: {''.join(mesh.output[-20:])}"
