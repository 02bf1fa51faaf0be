"""Stop strings over streamed text, with OpenAI semantics: the stop string is not emitted.

Text that might be the start of a stop string is held back until the following text settles
it. Invariants (tested):
- no emitted character belongs to, or follows, the stop string that matched;
- the outcome does not depend on how the text is split into deltas: the stop string that
  *ends* first wins, as when generation halts the moment one appears; between two that end at
  the same character, the longer (earlier starting) one wins;
- without a match, everything fed is emitted, in order, once `flush()` is called.

The scan is an Aho-Corasick automaton over the stop strings' characters: each new character
costs one transition (amortised), whatever the number and length of the stop strings, and
the held text is exactly the automaton state's depth. Rescanning every stop string against a
window per delta made one request with many stop strings slow down every request of the
detokenizer's round (issue 17). Automata are shared by requests with the same stop strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

# Transition keys are `state * CODE_POINTS + ord(char)`: one flat dict of ints, far smaller
# than a dict per state.
CODE_POINTS = 0x110000
CACHED_AUTOMATA = 64


@dataclass(frozen=True, slots=True)
class StopMatch:
    """The outcome of one delta: text safe to emit now, and the stop string if one matched."""

    text: str
    matched: str | None = None


class StopAutomaton:
    """The stop strings' trie with failure links; immutable once built, so shareable.

    State 0 is the root. `depth[s]` is the length of the text state `s` stands for (the
    longest suffix of the text read that is a prefix of some stop string); `match[s]` the
    length of the longest stop string ending there, 0 if none.
    """

    __slots__ = ("goto", "fail", "depth", "match")

    def __init__(self, stops: Sequence[str]) -> None:
        self.goto: dict[int, int] = {}
        self.depth: list[int] = [0]
        self.match: list[int] = [0]
        children: list[list[tuple[int, int]]] = [[]]  # per state: (code point, child)
        for stop in stops:
            state = 0
            for char in stop:
                code = ord(char)
                child = self.goto.get(state * CODE_POINTS + code)
                if child is None:
                    child = len(self.depth)
                    self.goto[state * CODE_POINTS + code] = child
                    self.depth.append(self.depth[state] + 1)
                    self.match.append(0)
                    children.append([])
                    children[state].append((code, child))
                state = child
            self.match[state] = len(stop)
        self.fail = [0] * len(self.depth)
        self._link(children)

    def _link(self, children: list[list[tuple[int, int]]]) -> None:
        """Failure links, breadth first so a link's target is done before its source; each
        state's `match` inherits its target's when it ends no stop string itself."""
        fail = self.fail
        queue = [child for _, child in children[0]]
        for state in queue:  # grows while iterated: a breadth-first walk
            for code, child in children[state]:
                target = self.next(fail[state], code)
                fail[child] = target
                if not self.match[child]:
                    self.match[child] = self.match[target]
                queue.append(child)

    def next(self, state: int, code: int) -> int:
        """The state after reading the character `code` in `state`."""
        goto, fail = self.goto, self.fail
        while True:
            child = goto.get(state * CODE_POINTS + code)
            if child is not None:
                return child
            if state == 0:
                return 0
            state = fail[state]


@lru_cache(maxsize=CACHED_AUTOMATA)
def automaton(stops: tuple[str, ...]) -> StopAutomaton:
    return StopAutomaton(stops)


class StopStringMatcher:
    """Per-request matcher. After a match it emits nothing more."""

    def __init__(self, stops: Sequence[str]) -> None:
        unique = tuple(dict.fromkeys(stop for stop in stops if stop))
        self._automaton = automaton(unique) if unique else None
        self._state = 0
        self._held = ""
        self._matched: str | None = None

    @property
    def matched(self) -> str | None:
        return self._matched

    @property
    def has_stops(self) -> bool:
        """False when there is nothing to match: `feed` then returns its text as it is."""
        return self._automaton is not None

    def feed(self, delta: str) -> StopMatch:
        if self._matched is not None:
            return StopMatch("")
        if self._automaton is None:
            return StopMatch(delta)
        scan, state = self._automaton, self._state
        for index, char in enumerate(delta):
            state = scan.next(state, ord(char))
            length = scan.match[state]
            if length:
                end = len(self._held) + index + 1
                text = self._held + delta
                self._held, self._matched = "", text[end - length:end]
                return StopMatch(text[:end - length], self._matched)
        self._state = state
        text = self._held + delta
        keep = scan.depth[state]  # never more than the text: depth grows one per character
        self._held = text[len(text) - keep:]
        return StopMatch(text[:len(text) - keep])

    def flush(self) -> str:
        """Releases held text at the end of the stream: it can no longer become a stop."""
        held, self._held = self._held, ""
        self._state = 0
        return held if self._matched is None else ""
