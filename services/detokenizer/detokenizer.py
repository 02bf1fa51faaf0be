"""The detokenizer service's core: batches of token deltas in, batches of text deltas out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from radixmesh.services.detokenizer.incremental import (
    IncrementalDetokenizer,
    TokenDecoder,
    decode_many,
)
from radixmesh.services.detokenizer.stop_strings import StopStringMatcher
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenDelta
from radixmesh.shared.sampling_params import HARD_LIMITS, check_stop_lists
from radixmesh.shared.text_checks import check_rid

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestStream:
    """Decoding state of one request; a refused one has neither decoder nor matcher."""

    decoder: IncrementalDetokenizer | None
    stops: StopStringMatcher | None
    finished: bool = False  # a finish went out; whatever arrives later is dropped
    refused: str = ""       # why the entry check refused it: its first delta ends it so


class Detokenizer:
    """One IncrementalDetokenizer and StopStringMatcher per request id.

    Each TokenDelta of a known, unfinished request yields exactly one TextDelta, in order.
    A stop string match finishes the request with FinishKind.STOP; the tokens the scheduler
    produced meanwhile (it learns of the stop only when the caller aborts the request) are
    dropped, as are deltas of ids never added or already released.

    Nothing a caller sends may raise out of `add_request` or `feed` (design §11: the
    scheduler's stream carries every request): a registration that fails the entry checks, or
    tokens that cannot be decoded, end that request alone with FinishKind.ABORT and the reason.
    """

    def __init__(self, tokenizer: TokenDecoder) -> None:
        self._tokenizer = tokenizer
        self._streams: dict[str, RequestStream] = {}

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, rid: object) -> bool:
        return rid in self._streams

    def add_request(self, rid: str, stop: Sequence[str] = (),
                    prompt_ids: Sequence[int] = ()) -> None:
        if rid in self._streams:
            raise ValueError(f"request {rid!r} is already being detokenized")
        try:
            self._check_entry(rid, stop, prompt_ids)
            stream = RequestStream(IncrementalDetokenizer(self._tokenizer, prompt_ids),
                                   StopStringMatcher(stop))
        except Exception as error:  # a bad registration must not fail the scheduler's stream
            logger.warning("refused request %r at the detokenizer's entry: %s", rid, error)
            stream = RequestStream(None, None, refused=f"refused by the detokenizer: {error}")
        self._streams[rid] = stream

    @staticmethod
    def _check_entry(rid: str, stop: Sequence[str], prompt_ids: Sequence[int]) -> None:
        """Ids are not held to the tokenizer's vocabulary: a model may have more embedding
        rows than its tokenizer has tokens (they decode to nothing). Ids no tokenizer can take
        (negative ones) make the decoder raise, which refuses the request as well."""
        check_rid(rid)
        check_stop_lists(stop, (), HARD_LIMITS)

    def release(self, rid: str) -> None:
        """Forgets a request; unknown ids are ignored, so releasing twice is harmless."""
        self._streams.pop(rid, None)

    def feed(self, deltas: Sequence[TokenDelta]) -> list[TextDelta]:
        return [text for text in self.feed_aligned(deltas) if text is not None]

    def feed_aligned(self, deltas: Sequence[TokenDelta]) -> list[TextDelta | None]:
        """As `feed`, with one entry per delta: None where the delta is dropped.

        The plain deltas (not finishing, of a live request, its first in `deltas`) are
        decoded first, all in one call into the tokenizer (issue 16: a decode per request per
        step cost more in calls than in decoding); the rest after them one by one, in order,
        so each request's deltas are still taken in the order they came."""
        out: list[TextDelta | None] = [None] * len(deltas)
        plain: list[tuple[int, RequestStream]] = []
        rest: list[tuple[int, RequestStream]] = []
        seen: set[str] = set()
        for index, delta in enumerate(deltas):
            stream = self._streams.get(delta.rid)
            if stream is None or stream.finished:
                continue
            if delta.finish is None and stream.decoder is not None and delta.rid not in seen:
                plain.append((index, stream))
            else:
                rest.append((index, stream))
            seen.add(delta.rid)
        self._feed_plain(deltas, plain, out)
        for index, stream in rest:
            if not stream.finished:
                out[index] = self._step(stream, deltas[index])
        return out

    def _feed_plain(self, deltas: Sequence[TokenDelta], plain: list[tuple[int, RequestStream]],
                    out: list[TextDelta | None]) -> None:
        windows: list[list[int]] = []
        for index, stream in plain:
            windows.extend(stream.decoder.windows(deltas[index].token_ids))
        try:
            texts = decode_many(self._tokenizer, windows)
        except Exception:  # ids the tokenizer refuses: one by one, so only their request ends
            for index, stream in plain:
                out[index] = self._step(stream, deltas[index])
            return
        for row, (index, stream) in enumerate(plain):
            delta = deltas[index]
            text = stream.decoder.commit(delta.token_ids, texts[2 * row], texts[2 * row + 1])
            if stream.stops.has_stops:
                out[index] = self._text_delta(stream, delta, text)
            else:  # nothing to hold back or match
                out[index] = TextDelta(delta.rid, text, list(delta.token_ids))

    def _step(self, stream: RequestStream, delta: TokenDelta) -> TextDelta:
        try:
            text = self._decode(stream, delta)
        except Exception as error:  # this request's tokens only: the others go on
            logger.warning("request %r ends: %s", delta.rid, error)
            stream.finished = True
            reason = stream.refused or f"could not decode its token ids: {error}"
            # Refused at the entry check: the request was bad (400); else decoding failed (500).
            status = 400 if stream.refused else 500
            return TextDelta(delta.rid, "", list(delta.token_ids),
                             FinishReason(FinishKind.ABORT, message=reason, status_code=status),
                             delta.usage)
        return self._text_delta(stream, delta, text)

    @staticmethod
    def _text_delta(stream: RequestStream, delta: TokenDelta, text: str) -> TextDelta:
        """The delta's TextDelta once its new text is decoded: stop strings applied."""
        match = stream.stops.feed(text)
        if match.matched is not None:
            stream.finished = True
            finish = FinishReason(FinishKind.STOP, matched=match.matched)
            return TextDelta(delta.rid, match.text, list(delta.token_ids), finish, delta.usage)
        if delta.finish is not None:
            stream.finished = True
            return TextDelta(delta.rid, match.text + stream.stops.flush(),
                             list(delta.token_ids), delta.finish, delta.usage)
        return TextDelta(delta.rid, match.text, list(delta.token_ids))

    @staticmethod
    def _decode(stream: RequestStream, delta: TokenDelta) -> str:
        """The delta's new text; raises for a refused request or ids the tokenizer refuses."""
        if stream.decoder is None:
            raise InvalidRequestError("request", stream.refused)
        text = stream.decoder.feed(delta.token_ids)
        if delta.finish is not None:
            text += stream.decoder.flush()
        return text
