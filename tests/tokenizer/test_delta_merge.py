"""Merged deltas say exactly what their parts said: the backlog merge, `--stream-interval`'s
held deltas, and how a request's end (finish, abort, error) carries what was held.

Random delta sequences (seeded) as the detokenizer makes them: one or more tokens per delta,
text that may be held back (empty) or multi-token, and a last delta finishing by length, by a
stop string (text truncated before the match), by a stop token, or aborted.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.shared.errors import UnavailableError
from radixmesh.shared.front_door.delta_merge import HeldDeltas, merge_deltas
from radixmesh.shared.front_door.live_request import LiveRequest, RequestStream
from radixmesh.shared.front_door.live_requests import LiveRequests
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, Usage

FINISHES = (FinishReason(FinishKind.LENGTH), FinishReason(FinishKind.STOP, matched="</s>"),
            FinishReason(FinishKind.STOP, matched=7), FinishReason(FinishKind.ABORT,
                                                                    message="aborted"))


def random_deltas(rng: random.Random, count: int) -> list[TextDelta]:
    """`count` deltas of request "r", the last finishing with usage."""
    deltas = []
    for _ in range(count):
        ids = [rng.randrange(50_000) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        text = rng.choice(("", "a", "é", " word", "字", "ab\n"))
        deltas.append(TextDelta("r", text, ids))
    last = deltas[-1]
    finish = rng.choice(FINISHES)
    if finish.matched == "</s>":  # a stop string's match is cut from the text
        last = TextDelta("r", last.text[:rng.randrange(len(last.text) + 1)], last.token_ids)
    produced = sum(len(delta.token_ids) for delta in deltas)
    deltas[-1] = TextDelta("r", last.text, last.token_ids, finish, Usage(5, produced, 2))
    return deltas


def assert_same_completion(sent: list[TextDelta], parts: list[TextDelta]) -> None:
    assert "".join(delta.text for delta in sent) == "".join(delta.text for delta in parts)
    assert ([token for delta in sent for token in delta.token_ids]
            == [token for delta in parts for token in delta.token_ids])
    assert sent[-1].finish == parts[-1].finish and sent[-1].usage == parts[-1].usage
    assert all(delta.finish is None and delta.usage is None for delta in sent[:-1])


@pytest.mark.parametrize("seed", range(20))
def test_merging_any_grouping_of_deltas_is_exact(seed: int) -> None:
    rng = random.Random(seed)
    deltas = random_deltas(rng, rng.randrange(1, 40))
    groups, start = [], 0
    while start < len(deltas):  # random runs of consecutive deltas, each merged into one
        end = min(len(deltas), start + rng.randrange(1, 6))
        merged = deltas[start]
        for delta in deltas[start + 1:end]:
            merged = merge_deltas(merged, delta)
        groups.append(merged)
        start = end
    assert_same_completion(groups, deltas)


def sent_with_interval(deltas: list[TextDelta], interval: int) -> list[TextDelta]:
    """What a request's queue gets with --stream-interval `interval`, read after the fact."""
    live = LiveRequests().add(LiveRequest("r", 5, held=HeldDeltas(interval)))
    for delta in deltas[:-1]:
        live.push(delta)
    LiveRequests().finish(live, deltas[-1])
    return [live.queue.get_nowait() for _ in range(live.queue.qsize())]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("interval", (2, 4, 7))
def test_stream_interval_updates_every_n_tokens_and_loses_nothing(seed: int,
                                                                  interval: int) -> None:
    rng = random.Random(seed)
    deltas = random_deltas(rng, rng.randrange(1, 60))
    sent = sent_with_interval(deltas, interval)
    assert_same_completion(sent, deltas)
    assert sent[0].token_ids == deltas[0].token_ids  # the first token at once
    assert all(len(delta.token_ids) >= interval for delta in sent[1:-1])
    # One token per delta: the first alone, then one update per N tokens (the finish's last).
    if all(len(delta.token_ids) == 1 for delta in deltas):
        assert len(sent) == 1 + math.ceil((len(deltas) - 1) / interval)


def test_one_token_per_delta_with_interval_four_sends_ceil_n_over_four_plus_the_first() -> None:
    deltas = [TextDelta("r", chr(97 + i), [i]) for i in range(9)]
    deltas[-1] = TextDelta("r", "i", [8], FinishReason(FinishKind.LENGTH), Usage(5, 9, 0))
    sent = sent_with_interval(deltas, 4)
    assert [delta.token_ids for delta in sent] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    assert [delta.text for delta in sent] == ["a", "bcde", "fghi"]
    assert sent[-1].finish.kind is FinishKind.LENGTH


def test_held_deltas_go_out_before_an_abort_or_an_error() -> None:
    requests: LiveRequests[LiveRequest] = LiveRequests()
    aborted = requests.add(LiveRequest("a", 3, held=HeldDeltas(8)))
    failed = requests.add(LiveRequest("f", 3, held=HeldDeltas(8)))
    for live in (aborted, failed):
        for token in range(3):  # the first goes out, the next two are held
            live.push(TextDelta(live.rid, str(token), [token]))
    requests.abort("a")
    requests.fail_all("lost the mesh")
    assert [aborted.queue.get_nowait().text for _ in range(2)] == ["0", "12"]
    assert [failed.queue.get_nowait().text for _ in range(2)] == ["0", "12"]
    assert isinstance(failed.queue.get_nowait(), UnavailableError)


def test_a_reader_that_fell_behind_reads_the_backlog_as_one_then_the_error() -> None:
    async def body() -> list[TextDelta]:
        live = LiveRequest("b", 3)
        for token in range(5):
            live.push(TextDelta("b", str(token), [token]))
        live.put_error(UnavailableError("lost the mesh"))
        stream = RequestStream(live, lambda rid: None)
        read = [await stream.__anext__()]
        with pytest.raises(UnavailableError):
            await stream.__anext__()
        return read

    (merged,) = asyncio.run(body())
    assert merged.text == "01234" and merged.token_ids == [0, 1, 2, 3, 4]


def test_the_flag_is_checked() -> None:
    with pytest.raises(ValueError, match="--stream-interval"):
        TokenizerConfig(stream_interval=0)
