"""Token and text batches as columns (shared/wire_deltas.py): every delta comes back as it was
sent, in order, whatever it carries; the row-per-message form is still read; columns that
disagree are refused."""

from __future__ import annotations

import pytest

from radixmesh.shared import wire
from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenDelta, Usage
from radixmesh.shared.token_batch import DetokenizeRegistration, TokenBatch
from radixmesh.shared.trace_context import TraceContext

STOP = FinishReason(FinishKind.STOP, matched=7)
STOP_TEXT = FinishReason(FinishKind.STOP, matched="\n\n")
ABORT = FinishReason(FinishKind.ABORT, message="gone", status_code=500)
USAGE = Usage(prompt_tokens=3, completion_tokens=4, cached_tokens=2)
TRACE = TraceContext("00-0123456789abcdef0123456789abcdef-0123456789abcdef-01")


def mixed_token_batch() -> TokenBatch:
    """Steady rows, several tokens at once, none (an abort), endings and a repeated rid."""
    return TokenBatch(
        registrations=[DetokenizeRegistration("a", ("x", "yz"), (5, 6), 9, TRACE),
                       DetokenizeRegistration("b", (), (), 1)],
        deltas=[TokenDelta("a", [11]), TokenDelta("b", [12, 13, 14]), TokenDelta("c", [7], STOP, USAGE),
                TokenDelta("d", [], ABORT, Usage(5, 0, 0)), TokenDelta("e", [15]),
                TokenDelta("a", [], ABORT)],
        num_cached_tokens={"a": 4, "b": 0})


def test_a_token_batch_comes_back_as_sent() -> None:
    batch = mixed_token_batch()
    message = wire.token_batch_to_proto(batch)
    assert not message.deltas  # columns only: no message per row
    back = wire.token_batch_from_proto(
        internal_pb2.TokenBatch.FromString(message.SerializeToString()))
    assert back.registrations == batch.registrations
    assert back.deltas == batch.deltas
    assert back.num_cached_tokens == {"a": 4}  # a zero count is not sent, as before


def test_a_steady_decode_step_comes_back_one_token_a_row() -> None:
    deltas = [TokenDelta(f"r{i}", [100 + i]) for i in range(1000)]
    back = wire.token_batch_from_proto(wire.token_batch_to_proto(TokenBatch(deltas=deltas)))
    assert back.deltas == deltas and back.num_cached_tokens == {}


def test_a_text_batch_comes_back_as_sent() -> None:
    texts = [TextDelta("a", "Hello", [11, 12]), TextDelta("b", "", [13]),
             TextDelta("c", " world", [14], STOP_TEXT, USAGE), TextDelta("d", "", [], ABORT),
             TextDelta("e", "東京 🦀", [15, 16, 17])]
    message = wire.text_batch_to_proto(texts)
    assert not message.deltas
    assert wire.text_batch_from_proto(
        internal_pb2.TextBatch.FromString(message.SerializeToString())) == texts
    assert wire.text_batch_from_proto(wire.text_batch_to_proto([])) == []


def test_the_row_per_message_form_is_still_read_after_the_columns() -> None:
    """Batches of an older sender carry `deltas` only; a batch with both is read columns first."""
    old_tokens = internal_pb2.TokenBatch(deltas=[
        wire.token_delta_to_proto(TokenDelta("a", [11]), num_cached_tokens=3),
        wire.token_delta_to_proto(TokenDelta("b", [12], STOP, USAGE))])
    old_tokens.rids.append("z")
    old_tokens.num_tokens.append(1)
    old_tokens.token_ids.append(99)
    back = wire.token_batch_from_proto(old_tokens)
    assert back.deltas == [TokenDelta("z", [99]), TokenDelta("a", [11]),
                           TokenDelta("b", [12], STOP, USAGE)]
    assert back.num_cached_tokens == {"a": 3}
    old_text = internal_pb2.TextBatch(deltas=[
        wire.text_delta_to_proto(TextDelta("a", "hi", [11], ABORT, USAGE))])
    assert wire.text_batch_from_proto(old_text) == [TextDelta("a", "hi", [11], ABORT, USAGE)]


@pytest.mark.parametrize("spoil, words", [
    (lambda m: m.num_tokens.append(1), "token columns disagree"),
    (lambda m: m.token_ids.append(5), "token columns disagree"),
    (lambda m: m.num_tokens.__setitem__(0, -1), "token columns disagree"),
    (lambda m: m.endings.add(row=9), "names row 9"),
])
def test_columns_that_disagree_are_refused(spoil, words: str) -> None:
    message = wire.token_batch_to_proto(TokenBatch(deltas=[TokenDelta("a", [1]),
                                                           TokenDelta("b", [2, 3])]))
    spoil(message)
    with pytest.raises(ValueError, match=words):
        wire.token_batch_from_proto(message)
    text = wire.text_batch_to_proto([TextDelta("a", "x", [1])])
    text.texts.append("extra")
    with pytest.raises(ValueError, match="has 2 texts"):
        wire.text_batch_from_proto(text)
