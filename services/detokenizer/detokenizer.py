"""The detokenizer service's core: batches of token deltas in, batches of text deltas out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from radixmesh.services.detokenizer.incremental import IncrementalDetokenizer, TokenDecoder
from radixmesh.services.detokenizer.stop_strings import StopStringMatcher
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenDelta


@dataclass(slots=True)
class RequestStream:
    """Decoding state of one request."""

    decoder: IncrementalDetokenizer
    stops: StopStringMatcher
    finished: bool = False  # a finish went out; whatever arrives later is dropped


class Detokenizer:
    """One IncrementalDetokenizer and StopStringMatcher per request id.

    Each TokenDelta of a known, unfinished request yields exactly one TextDelta, in order.
    A stop string match finishes the request with FinishKind.STOP; the tokens the scheduler
    produced meanwhile (it learns of the stop only when the caller aborts the request) are
    dropped, as are deltas of ids never added or already released.
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
        self._streams[rid] = RequestStream(
            decoder=IncrementalDetokenizer(self._tokenizer, prompt_ids),
            stops=StopStringMatcher(stop))

    def release(self, rid: str) -> None:
        """Forgets a request; unknown ids are ignored, so releasing twice is harmless."""
        self._streams.pop(rid, None)

    def feed(self, deltas: Sequence[TokenDelta]) -> list[TextDelta]:
        out: list[TextDelta] = []
        for delta in deltas:
            stream = self._streams.get(delta.rid)
            if stream is None or stream.finished:
                continue
            out.append(self._step(stream, delta))
        return out

    def _step(self, stream: RequestStream, delta: TokenDelta) -> TextDelta:
        text = stream.decoder.feed(delta.token_ids)
        if delta.finish is not None:
            text += stream.decoder.flush()
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
