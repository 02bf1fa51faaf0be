"""The scheduler -> detokenizer -> tokenizer links' messages: token and text deltas in batches.

A batch's deltas travel as columns (rids, token counts, every row's tokens back to back and,
for text, every row's text) plus an ending for the few rows that carry more: a finish, usage
or a first delta's cached-token count. At a thousand rows a step, a message per row was most
of what these links cost on both ends (issue 16); columns cost a few list copies. Receivers
still read the row-per-message form (`deltas`), after the columns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from radixmesh.shared.protos_gen import internal_pb2
from radixmesh.shared.requests import FinishReason, TextDelta, TokenDelta, Usage
from radixmesh.shared.token_batch import DetokenizeRegistration, TokenBatch
from radixmesh.shared.wire_common import (
    finish_from_proto,
    finish_to_proto,
    trace_from_proto,
    trace_to_proto,
    usage_from_proto,
    usage_to_proto,
)

DeltaMessage = TypeVar("DeltaMessage", internal_pb2.TokenDelta, internal_pb2.TextDelta,
                       internal_pb2.DeltaEnding)
BatchMessage = internal_pb2.TokenBatch | internal_pb2.TextBatch
NO_CACHED: Mapping[str, int] = {}


def token_batch_to_proto(batch: TokenBatch) -> internal_pb2.TokenBatch:
    message = internal_pb2.TokenBatch(new_requests=[internal_pb2.DetokenizeRequest(
        rid=reg.rid, stop=list(reg.stop), prompt_tail_ids=list(reg.prompt_tail_ids),
        num_prompt_tokens=reg.num_prompt_tokens, trace=trace_to_proto(reg.trace))
        for reg in batch.registrations])
    _pack(message, batch.deltas, batch.num_cached_tokens)
    return message


def token_batch_from_proto(message: internal_pb2.TokenBatch) -> TokenBatch:
    """ValueError when the columns disagree in length (a malformed batch)."""
    deltas = [TokenDelta(rid, ids) for rid, ids in zip(message.rids, _token_lists(message),
                                                       strict=True)]
    cached: dict[str, int] = {}
    for ending in _endings(message, len(deltas)):
        delta = deltas[ending.row]
        delta.finish, delta.usage = _ending_from_proto(ending)
        if ending.num_cached_tokens:
            cached[delta.rid] = ending.num_cached_tokens
    for row in message.deltas:
        deltas.append(token_delta_from_proto(row))
        if row.num_cached_tokens:
            cached[row.rid] = row.num_cached_tokens
    return TokenBatch(
        registrations=[DetokenizeRegistration(new.rid, tuple(new.stop),
                                              tuple(new.prompt_tail_ids), new.num_prompt_tokens,
                                              trace_from_proto(new.trace))
                       for new in message.new_requests],
        deltas=deltas, num_cached_tokens=cached)


def text_batch_to_proto(deltas: Sequence[TextDelta]) -> internal_pb2.TextBatch:
    message = internal_pb2.TextBatch(texts=[delta.text for delta in deltas])
    _pack(message, deltas, NO_CACHED)
    return message


def text_batch_from_proto(message: internal_pb2.TextBatch) -> list[TextDelta]:
    """ValueError when the columns disagree in length (a malformed batch)."""
    if len(message.texts) != len(message.rids):
        raise ValueError(f"a text batch of {len(message.rids)} rids has "
                         f"{len(message.texts)} texts")
    deltas = [TextDelta(rid, text, ids) for rid, text, ids in zip(
        message.rids, message.texts, _token_lists(message), strict=True)]
    for ending in _endings(message, len(deltas)):
        delta = deltas[ending.row]
        delta.finish, delta.usage = _ending_from_proto(ending)
    deltas.extend(text_delta_from_proto(row) for row in message.deltas)
    return deltas


def _pack(message: BatchMessage, deltas: Sequence[TokenDelta] | Sequence[TextDelta],
          cached: Mapping[str, int]) -> None:
    """Writes `deltas` into the message's columns; `cached`: a first delta's cached count."""
    message.rids.extend([delta.rid for delta in deltas])
    message.num_tokens.extend([len(delta.token_ids) for delta in deltas])
    message.token_ids.extend([token for delta in deltas for token in delta.token_ids])
    rows = [row for row, delta in enumerate(deltas) if delta.finish is not None
            or delta.usage is not None or delta.rid in cached]
    for row in rows:
        delta = deltas[row]
        ending = message.endings.add(row=row, num_cached_tokens=cached.get(delta.rid, 0))
        _with_ending(ending, delta.finish, delta.usage)


def _token_lists(message: BatchMessage) -> list[list[int]]:
    """Each row's token ids, cut from the flat column by the counts."""
    counts, flat = list(message.num_tokens), list(message.token_ids)
    if len(counts) != len(message.rids) or sum(counts) != len(flat) or min(counts, default=0) < 0:
        raise ValueError(f"a batch's token columns disagree: {len(message.rids)} rids, "
                         f"{len(counts)} counts summing to {sum(counts)}, {len(flat)} token ids")
    if set(counts) == {1}:  # steady decode: one token a row
        return [[token] for token in flat]
    out, start = [], 0
    for count in counts:
        out.append(flat[start:start + count])
        start += count
    return out


def _endings(message: BatchMessage, num_rows: int) -> Sequence[internal_pb2.DeltaEnding]:
    for ending in message.endings:
        if not 0 <= ending.row < num_rows:
            raise ValueError(f"a delta ending names row {ending.row} of a batch of {num_rows}")
    return message.endings


# ---- the row-per-message form ---------------------------------------------------------------


def token_delta_to_proto(delta: TokenDelta, num_cached_tokens: int = 0) -> internal_pb2.TokenDelta:
    message = internal_pb2.TokenDelta(rid=delta.rid, token_ids=delta.token_ids,
                                      num_cached_tokens=num_cached_tokens)
    return _with_ending(message, delta.finish, delta.usage)


def token_delta_from_proto(message: internal_pb2.TokenDelta) -> TokenDelta:
    return TokenDelta(message.rid, list(message.token_ids), *_ending_from_proto(message))


def text_delta_to_proto(delta: TextDelta) -> internal_pb2.TextDelta:
    message = internal_pb2.TextDelta(rid=delta.rid, text=delta.text, token_ids=delta.token_ids)
    return _with_ending(message, delta.finish, delta.usage)


def text_delta_from_proto(message: internal_pb2.TextDelta) -> TextDelta:
    return TextDelta(message.rid, message.text, list(message.token_ids),
                     *_ending_from_proto(message))


def _with_ending(message: DeltaMessage, finish: FinishReason | None,
                 usage: Usage | None) -> DeltaMessage:
    """Sets a delta's (or ending's) finish and usage, which only a request's last delta has."""
    if finish is not None:
        message.finish.CopyFrom(finish_to_proto(finish))
    if usage is not None:
        message.usage.CopyFrom(usage_to_proto(usage))
    return message


def _ending_from_proto(message: DeltaMessage) -> tuple[FinishReason | None, Usage | None]:
    usage = usage_from_proto(message.usage) if message.HasField("usage") else None
    return finish_from_proto(message.finish), usage
