"""`multiturn-long` without a server: the closed loop's order and limits, the §8 shape, the
per-tier scrape's parsing, and which flags go with which workload."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from radixmesh.bench.cli import add_cli_args, check_args
from radixmesh.bench.multiturn import ClosedLoop, MultiturnOptions, Turn
from radixmesh.bench.multiturn_report import tier_counters, tier_deltas
from radixmesh.bench.workloads import FIRST_TOKEN_ID

SMALL = MultiturnOptions(vocab_size=100, num_clients=3, num_rounds=3, new_tokens=16,
                         output_len=4, max_inflight=2)


def fake_run(options: MultiturnOptions, finish_order: str = "fifo") -> ClosedLoop:
    """Drives the loop with a fake send: each round "generates" ids 1000 + its send index and
    ends immediately; `finish_order` says which in-flight round ends first."""
    loop, running = ClosedLoop(options), []
    while True:
        while (turn := loop.next_turn()) is not None:
            assert loop.in_flight <= options.max_inflight
            assert all(other.client != turn.client for other in running)
            running.append(turn)
        if not running:
            return loop
        turn = running.pop(0 if finish_order == "fifo" else -1)
        turn.trace.send_time, index = 0.0, len(loop.turns)
        turn.output_ids = [1000 + index] * options.output_len
        turn.trace.on_chunk(1.0, options.output_len)
        turn.trace.on_end(1.0, None, {"type": "length"})
        loop.finish(turn)


def assert_prompts_extend_their_history(loop: ClosedLoop) -> None:
    options = loop.options
    for client in range(options.num_clients):
        rounds = [turn for turn in loop.turns if turn.client == client]
        assert [turn.round for turn in rounds] == list(range(1, options.num_rounds + 1))
        previous: tuple[int, ...] = ()
        for turn in rounds:
            new = tuple(loop.new_ids[client, turn.round - 1].tolist())
            assert turn.input_ids == previous + new
            previous = turn.input_ids + tuple(turn.output_ids)


@pytest.mark.parametrize("finish_order", ["fifo", "lifo"])
def test_every_round_extends_the_last_and_the_limit_holds(finish_order: str) -> None:
    loop = fake_run(SMALL, finish_order)
    assert len(loop.turns) == 9 and loop.max_in_flight == 2 and loop.in_flight == 0
    assert_prompts_extend_their_history(loop)


def test_token_ids_are_drawn_first_then_one_pick_per_send() -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(FIRST_TOKEN_ID, 100, size=(3, 3, 16))
    first, second = int(rng.integers(3)), int(rng.integers(2))
    loop = ClosedLoop(SMALL)
    assert (loop.new_ids == ids).all()
    turn_a, turn_b = loop.next_turn(), loop.next_turn()
    assert turn_a.client == first
    assert turn_b.client == [c for c in range(3) if c != first][second]
    assert loop.next_turn() is None  # both slots taken
    assert [t.client for t in fake_run(SMALL).turns] == [t.client for t in fake_run(SMALL).turns]


def test_a_failed_round_retires_its_client() -> None:
    loop = ClosedLoop(SMALL)
    turn: Turn = loop.next_turn()
    turn.trace.send_time = 0.0
    turn.trace.on_error(1.0, "UNAVAILABLE: gone")
    loop.finish(turn)
    assert turn.client not in loop.ready and loop.in_flight == 0


def test_the_design_shape() -> None:
    options = MultiturnOptions(vocab_size=1000)
    final = options.prompt_len(8) + options.output_len
    assert final == 8 * 512 + 7 * 128 + 128
    assert 32 * final == 163_840  # §8's "~164k tokens" working set
    assert round(options.ceiling_hit_rate, 2) == 0.81
    assert options.too_long_for(final, 65_536) is None
    assert "context length is 4096" in options.too_long_for(4096, 65_536)


PROMETHEUS = """\
# HELP radixmesh:cached_tokens_total prompt tokens served from the prefix cache
# TYPE radixmesh:cached_tokens_total counter
radixmesh:cached_tokens_total 40.0
"""
TIERED = """\
# TYPE radixmesh:cached_tokens counter
radixmesh:cached_tokens_total{tier="device"} 30.0
radixmesh:cached_tokens_total{tier="host"} 10.0
"""


def test_only_tiered_samples_count_as_tiers() -> None:
    assert tier_counters(PROMETHEUS) == {}
    after = tier_counters(TIERED)
    assert after == {"device": 30.0, "host": 10.0}
    assert tier_deltas({"device": 20.0}, after) == {"device": 10, "host": 10}
    assert tier_deltas({}, {}) == {} and tier_deltas(None, after) == {}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    return parser.parse_args(list(argv))


def test_flags_go_with_their_workload() -> None:
    assert check_args(parse("--workload", "multiturn-long", "--num-clients", "3",
                            "--max-inflight", "2")) is None
    assert "only for --workload multiturn-long" in check_args(
        parse("--workload", "sharegpt-like", "--num-rounds", "3"))
    assert "do not apply" in check_args(parse("--workload", "multiturn-long",
                                              "--num-prompts", "3"))
    assert "--output-len must be >= 1" in check_args(parse("--workload", "multiturn-long",
                                                           "--output-len", "0"))
