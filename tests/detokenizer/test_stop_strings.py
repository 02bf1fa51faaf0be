"""StopStringMatcher: stop strings across deltas, never emitted, held back while ambiguous."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from radixmesh.services.detokenizer.stop_strings import StopMatch, StopStringMatcher


def run(stops: list[str], deltas: list[str]) -> tuple[str, str | None, list[StopMatch]]:
    """Feeds every delta then flushes: (all emitted text, matched stop, per-delta results)."""
    matcher = StopStringMatcher(stops)
    results = [matcher.feed(delta) for delta in deltas]
    emitted = "".join(result.text for result in results) + matcher.flush()
    return emitted, matcher.matched, results


def reference(stops: list[str], text: str) -> tuple[str, str | None]:
    """The first stop string to complete as the text grows; the longest if several do."""
    for end in range(1, len(text) + 1):
        ending = [stop for stop in stops if stop and text[:end].endswith(stop)]
        if ending:
            stop = max(ending, key=len)
            return text[:end - len(stop)], stop
    return text, None


def test_no_stops_passes_everything_through():
    assert run([], ["a", "b"])[2] == [StopMatch("a"), StopMatch("b")]


def test_stop_within_one_delta_is_cut_with_what_follows():
    emitted, matched, results = run(["END"], ["abcENDxyz", "more"])
    assert (emitted, matched) == ("abc", "END")
    assert results == [StopMatch("abc", "END"), StopMatch("")]


def test_stop_spanning_deltas():
    emitted, matched, results = run(["STOP"], ["hello S", "T", "OP world"])
    assert (emitted, matched) == ("hello ", "STOP")
    assert [r.text for r in results] == ["hello ", "", ""]
    assert results[-1].matched == "STOP"


def test_partial_match_is_held_then_released_when_it_diverges():
    _, matched, results = run(["STOP"], ["ab ST", "ARE"])
    assert [r.text for r in results] == ["ab ", "STARE"]
    assert matched is None


def test_held_text_is_released_by_flush_at_the_end():
    matcher = StopStringMatcher(["</answer>"])
    assert matcher.feed("42 </ans").text == "42 "
    assert matcher.flush() == "</ans"
    assert matcher.flush() == ""


def test_stop_at_the_very_start():
    emitted, matched, results = run(["Q:"], ["Q", ": next"])
    assert (emitted, matched) == ("", "Q:")
    assert results == [StopMatch(""), StopMatch("", "Q:")]


def test_multiple_stops_the_one_completing_first_wins():
    assert run(["world", "lo w"], ["hello world"])[:2] == ("hel", "lo w")
    assert run(["abc", "b"], ["abc"])[:2] == ("a", "b")


def test_two_stops_ending_together_the_longer_wins():
    assert run(["c", "abc"], ["xabc"])[:2] == ("x", "abc")


def test_nothing_is_emitted_after_a_match():
    matcher = StopStringMatcher(["."])
    assert matcher.feed("One. Two") == StopMatch("One", ".")
    assert matcher.feed("three") == StopMatch("")
    assert matcher.flush() == ""


def test_empty_stop_strings_are_ignored():
    assert run(["", "x"], ["abc"])[:2] == ("abc", None)


def test_overlapping_prefix_of_a_stop_keeps_the_longest_candidate():
    # "aab" contains "ab" only after the first "a" is ruled out as a start.
    assert run(["ab"], ["a", "a", "b"])[:2] == ("a", "ab")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="abc.", max_size=24),
       stops=st.lists(st.text(alphabet="abc.", min_size=1, max_size=4), max_size=3),
       cuts=st.lists(st.integers(0, 24), max_size=8))
def test_any_split_gives_the_reference_outcome(text: str, stops: list[str], cuts: list[int]):
    bounds = [0, *sorted({min(c, len(text)) for c in cuts}), len(text)]
    deltas = [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    emitted, matched, _ = run(stops, deltas)
    assert (emitted, matched) == reference(stops, text)
