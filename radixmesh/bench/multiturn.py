"""`multiturn-long` (design §8): clients that resend their whole history, round after round.

Unlike the other workloads, the prompts are not known up front: round r + 1 of a client is its
round-r prompt, the token ids the server generated for it, then fresh random ids, so it can
only be sent once round r has finished. `ClosedLoop` holds that state and the order of
sending; the two drivers below only move requests through the mesh or the in-process engine.

Order of draws from `numpy.random.default_rng(seed)`: every client's new ids for every round
first (client by client, round by round), then one pick per send. So the prompts' random parts
never depend on timing; only which ready client goes next does, through what is ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from radixmesh.bench.mesh_path import stream_one
from radixmesh.bench.trace import RequestTrace
from radixmesh.bench.workloads import FIRST_TOKEN_ID
from radixmesh.client import AsyncClient
from radixmesh.engine import Engine
from radixmesh.shared.errors import InvalidRequestError

MULTITURN = "multiturn-long"
# §8: 32 clients x 8 rounds, 512 new tokens and 128 out per round, at most 16 in flight.
DEFAULTS = {"num_clients": 32, "num_rounds": 8, "new_tokens": 512, "output_len": 128,
            "max_inflight": 16}


@dataclass(frozen=True, slots=True)
class MultiturnOptions:
    vocab_size: int
    num_clients: int = DEFAULTS["num_clients"]
    num_rounds: int = DEFAULTS["num_rounds"]
    new_tokens: int = DEFAULTS["new_tokens"]
    output_len: int = DEFAULTS["output_len"]
    max_inflight: int = DEFAULTS["max_inflight"]
    seed: int = 1

    def __post_init__(self) -> None:
        if self.vocab_size <= FIRST_TOKEN_ID:
            raise ValueError(f"--vocab-size must be > {FIRST_TOKEN_ID}, got {self.vocab_size}")
        for name, flag in (("num_clients", "--num-clients"), ("num_rounds", "--num-rounds"),
                           ("new_tokens", "--new-tokens-per-round"),
                           ("output_len", "--output-len"), ("max_inflight", "--max-inflight")):
            if getattr(self, name) < 1:
                raise ValueError(f"{flag} must be >= 1")

    def prompt_len(self, round_: int) -> int:
        """Round `round_` (1-based) sends every earlier round's new ids and outputs, plus its own."""
        return round_ * self.new_tokens + (round_ - 1) * self.output_len

    @property
    def ceiling_hit_rate(self) -> float:
        """The share of prompt tokens a cache that never evicts could serve: everything but
        each round's new ids (the last output token, never fed back, is ignored here)."""
        rounds = range(1, self.num_rounds + 1)
        prompt = sum(self.prompt_len(r) for r in rounds)
        return sum(self.prompt_len(r) - self.new_tokens for r in rounds) / prompt

    def too_long_for(self, context_len: int, max_total_tokens: int) -> str | None:
        """Why the last round cannot run on this server, found before anything is sent."""
        need = self.prompt_len(self.num_rounds) + self.output_len
        for limit, what in ((context_len, "context length"),
                            (max_total_tokens, "KV pool (max total tokens)")):
            if need > limit:
                return (f"round {self.num_rounds} needs {need} tokens (prompt "
                        f"{self.prompt_len(self.num_rounds)} + {self.output_len} out) but the "
                        f"server's {what} is {limit}; lower --num-rounds, "
                        "--new-tokens-per-round or --output-len")
        return None


@dataclass(slots=True)
class Turn:
    """One round of one client: what was sent and what came back."""

    client: int
    round: int  # 1-based
    input_ids: tuple[int, ...]
    trace: RequestTrace
    output_ids: list[int] = field(default_factory=list)


class ClosedLoop:
    """Who may send next. A client is ready when its previous round has finished; a failed
    round retires the client (there is no output to build its next prompt from)."""

    def __init__(self, options: MultiturnOptions) -> None:
        self.options = options
        rng = np.random.default_rng(options.seed)
        shape = (options.num_clients, options.num_rounds, options.new_tokens)
        self.new_ids = rng.integers(FIRST_TOKEN_ID, options.vocab_size, size=shape)
        self.rng = rng  # the picks continue the same stream, after every token id
        self.history: list[tuple[int, ...]] = [()] * options.num_clients
        self.rounds_done = [0] * options.num_clients
        self.ready = set(range(options.num_clients))
        self.in_flight = 0
        self.max_in_flight = 0  # observed, for the record
        self.turns: list[Turn] = []  # in sending order

    def next_turn(self) -> Turn | None:
        """A random ready client's next round, or None while every slot is taken or nobody is
        ready. Sorting the ready set makes the pick depend on the seed and the set only."""
        if self.in_flight >= self.options.max_inflight or not self.ready:
            return None
        ready = sorted(self.ready)
        client = ready[int(self.rng.integers(len(ready)))]
        self.ready.remove(client)
        round_ = self.rounds_done[client] + 1
        prompt = self.history[client] + tuple(self.new_ids[client, round_ - 1].tolist())
        turn = Turn(client, round_, prompt, RequestTrace(len(prompt)))
        self.turns.append(turn)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return turn

    def finish(self, turn: Turn) -> None:
        self.in_flight -= 1
        if not turn.trace.succeeded:
            return
        self.history[turn.client] = turn.input_ids + tuple(turn.output_ids)
        self.rounds_done[turn.client] = turn.round
        if turn.round < self.options.num_rounds:
            self.ready.add(turn.client)

    def body(self, turn: Turn, sampling: dict) -> dict:
        return {"input_ids": list(turn.input_ids), "max_new_tokens": self.options.output_len,
                **sampling}

    def progress_bar(self, path: str, progress: bool) -> tqdm:
        total = self.options.num_clients * self.options.num_rounds
        return tqdm(total=total, disable=not progress, unit="req", desc=f"{MULTITURN} ({path})")


async def run_multiturn_on_mesh(client: AsyncClient, loop: ClosedLoop, sampling: dict,
                                progress: bool = True,
                                traceparent: Callable[[], str] | None = None) -> list[Turn]:
    """Fills every free slot with a ready client, then waits for any round to finish.
    `traceparent`, when given, makes each request's W3C trace context as it goes out."""
    running: set[asyncio.Task] = set()

    async def send(turn: Turn) -> Turn:
        body = loop.body(turn, sampling)
        if traceparent is not None:
            body["traceparent"] = traceparent()
        await stream_one(client, body, turn.trace, turn.output_ids)
        return turn

    with loop.progress_bar("mesh", progress) as bar:
        while True:
            while (turn := loop.next_turn()) is not None:
                running.add(asyncio.create_task(send(turn)))
            if not running:
                return loop.turns
            done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                loop.finish(task.result())
                bar.update(1)


class _EngineRounds:
    """The rounds the engine holds, by request id; `end` hands a finished one back."""

    def __init__(self, engine: Engine, loop: ClosedLoop, sampling: dict, bar: tqdm) -> None:
        self.engine, self.loop, self.sampling, self.bar = engine, loop, sampling, bar
        self.in_flight: dict[str, Turn] = {}

    def end(self, turn: Turn) -> None:
        self.loop.finish(turn)
        self.bar.update(1)

    def submit_ready(self) -> None:
        while (turn := self.loop.next_turn()) is not None:
            rid = f"multiturn-{len(self.loop.turns)}"
            turn.trace.send_time = time.perf_counter()
            try:
                self.engine.submit(rid, self.loop.body(turn, self.sampling))
                self.in_flight[rid] = turn
            except InvalidRequestError as error:
                turn.trace.on_error(time.perf_counter(), str(error))
                self.end(turn)

    def fail_lost(self) -> None:
        """Rounds the engine no longer holds but never finished: failures, not a hang."""
        for turn in self.in_flight.values():
            turn.trace.on_error(time.perf_counter(), "the engine dropped the request")
            self.end(turn)
        self.in_flight.clear()

    def step(self) -> None:
        deltas, now = self.engine.step(), time.perf_counter()
        for delta in deltas:
            turn = self.in_flight[delta.rid]
            turn.trace.on_chunk(now, len(delta.token_ids))
            turn.output_ids.extend(delta.token_ids)
            if delta.finish is not None:
                usage = delta.usage.to_dict() if delta.usage is not None else None
                turn.trace.on_end(now, usage, delta.finish.to_dict())
                self.end(self.in_flight.pop(delta.rid))


def run_multiturn_on_engine(engine: Engine, loop: ClosedLoop, sampling: dict,
                            progress: bool = True) -> list[Turn]:
    """The same loop around the engine's own: submit into free slots, step, read deltas."""
    with loop.progress_bar("offline", progress) as bar:
        rounds = _EngineRounds(engine, loop, sampling, bar)
        while True:
            rounds.submit_ready()
            if not rounds.in_flight:
                break
            if engine.has_work:
                rounds.step()
            else:
                rounds.fail_lost()
    while engine.has_work:  # the step launched after the last finish: leave the engine idle
        engine.step()
    return loop.turns
