"""Several text deltas of one request sent as one message: the merge, and `--stream-interval`.

The public edge costs a message per delta (a gRPC message, an SSE chunk) on both ends, so the
front door sends fewer, larger ones where it may: deltas that piled up while a client's writer
was busy (`RequestStream`), and the deltas between two updates of `--stream-interval N` (SGLang's
flag: a stream's update every N output tokens, the first token and the finish always at once).

Invariant of a merge: the merged delta says exactly what its parts said in order (the texts
joined, the token ids concatenated), and ends the request as the last part does (its finish and
usage), so a client reading merged messages sees the same completion as one reading each delta.
"""

from __future__ import annotations

from dataclasses import dataclass

from radixmesh.shared.requests import TextDelta


def merge_deltas(first: TextDelta, second: TextDelta) -> TextDelta:
    """One delta saying what `first` then `second` said (`first` must not finish)."""
    return TextDelta(first.rid, first.text + second.text, first.token_ids + second.token_ids,
                     second.finish, second.usage)


@dataclass(slots=True)
class HeldDeltas:
    """The deltas of one request held back until its next `--stream-interval` update is due.

    Only deltas that do not finish pass through `hold`; the finishing delta (or the error that
    ends the request) takes whatever is held with it (`release`), so nothing held is lost.
    """

    interval: int  # >= 2: with 1 every delta goes out as it comes, and nothing is held
    held: TextDelta | None = None
    held_tokens: int = 0
    sent_first_token: bool = False

    def hold(self, delta: TextDelta) -> TextDelta | None:
        """Takes a non-finishing delta; returns the update to send now, or None to wait."""
        held = delta if self.held is None else merge_deltas(self.held, delta)
        self.held_tokens += len(delta.token_ids)
        # The first token goes out at once (time to first token is not traded away).
        if self.held_tokens >= self.interval or (self.held_tokens and not self.sent_first_token):
            self.sent_first_token = True
            self.held, self.held_tokens = None, 0
            return held
        self.held = held
        return None

    def release(self) -> TextDelta | None:
        """What is held, now (the request ends); None when nothing is."""
        held, self.held, self.held_tokens = self.held, None, 0
        return held
