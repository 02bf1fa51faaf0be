"""Stop strings over streamed text, with OpenAI semantics: the stop string is not emitted.

Text that might be the start of a stop string is held back until the following text settles
it. Invariants (tested):
- no emitted character belongs to, or follows, the stop string that matched;
- the outcome does not depend on how the text is split into deltas: the stop string that
  *ends* first wins, as when generation halts the moment one appears; between two that end at
  the same character, the longer (earlier starting) one wins;
- without a match, everything fed is emitted, in order, once `flush()` is called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StopMatch:
    """The outcome of one delta: text safe to emit now, and the stop string if one matched."""

    text: str
    matched: str | None = None


class StopStringMatcher:
    """Per-request matcher. After a match it emits nothing more."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._held = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    def feed(self, delta: str) -> StopMatch:
        if self._matched is not None:
            return StopMatch("")
        if not self._stops:
            return StopMatch(delta)
        text = self._held + delta
        found = self._earliest_match(text)
        if found is not None:
            start, stop = found
            self._held = ""
            self._matched = stop
            return StopMatch(text[:start], stop)
        keep = self._partial_match_length(text)
        self._held = text[len(text) - keep:]
        return StopMatch(text[:len(text) - keep])

    def flush(self) -> str:
        """Releases held text at the end of the stream: it can no longer become a stop."""
        held, self._held = self._held, ""
        return held if self._matched is None else ""

    def _earliest_match(self, text: str) -> tuple[int, str] | None:
        """(start, stop) of the occurrence ending first; ties go to the earlier start."""
        best: tuple[int, int, str] | None = None
        for stop in self._stops:
            start = text.find(stop)
            if start < 0:
                continue
            key = (start + len(stop), start, stop)
            if best is None or key < best:
                best = key
        return None if best is None else (best[1], best[2])

    def _partial_match_length(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop."""
        longest = min(len(text), max(len(stop) for stop in self._stops) - 1)
        for length in range(longest, 0, -1):
            suffix = text[len(text) - length:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return length
        return 0
