"""Detokenizer: batches of TokenDelta in, batches of TextDelta out, per-request state."""

from __future__ import annotations

import pytest

from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenDelta, Usage
from radixmesh.shared.tokenizer import TextTokenizer

LENGTH = FinishReason(FinishKind.LENGTH)
USAGE = Usage(prompt_tokens=3, completion_tokens=9, cached_tokens=0)


def ids_of(tokenizer: TextTokenizer, text: str) -> list[int]:
    return tokenizer.encode(text)[1:]  # without the BOS


def test_interleaved_requests_keep_their_own_text(text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    detok.add_request("a")
    detok.add_request("b")
    a_ids, b_ids = ids_of(text_tokenizer, "Hello, world"), ids_of(text_tokenizer, "東京 🦀")
    texts = {"a": "", "b": ""}
    for step in range(max(len(a_ids), len(b_ids))):
        batch = [TokenDelta(rid, ids[step:step + 1]) for rid, ids in (("a", a_ids), ("b", b_ids))]
        out = detok.feed(batch)
        assert [delta.rid for delta in out] == ["a", "b"]
        assert [delta.token_ids for delta in out] == [d.token_ids for d in batch]
        for delta in out:
            texts[delta.rid] += delta.text
    assert texts == {"a": "Hello, world", "b": "東京 🦀"}


def test_finish_flushes_held_text_and_passes_finish_and_usage_on(
        text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    detok.add_request("r", stop=["</tool>"])
    assert detok.feed([TokenDelta("r", ids_of(text_tokenizer, "x </to"))])[0].text == "x "
    [last] = detok.feed([TokenDelta("r", [], finish=LENGTH, usage=USAGE)])
    assert last == TextDelta("r", "</to", [], LENGTH, USAGE)


def test_stop_string_finishes_the_request_and_drops_later_tokens(
        text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    detok.add_request("r", stop=["\n\n"])
    ids = ids_of(text_tokenizer, "Answer: 42\n\nExtra")
    [delta] = detok.feed([TokenDelta("r", ids)])
    assert delta.text == "Answer: 42"
    assert delta.finish == FinishReason(FinishKind.STOP, matched="\n\n")
    # Tokens already in flight, and the abort's final delta, produce nothing more.
    late = [TokenDelta("r", ids_of(text_tokenizer, " more")),
            TokenDelta("r", [], finish=FinishReason(FinishKind.ABORT))]
    assert detok.feed(late) == []


def test_prompt_ids_give_context_without_leaking(text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    detok.add_request("r", prompt_ids=text_tokenizer.encode("Say"))
    out = detok.feed([TokenDelta("r", ids_of(text_tokenizer, " yes"), finish=LENGTH)])
    assert out[0].text == " yes"


def test_unknown_and_released_requests_are_ignored(text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    detok.add_request("r")
    detok.release("r")
    detok.release("r")
    assert "r" not in detok and len(detok) == 0
    assert detok.feed([TokenDelta("r", [70]), TokenDelta("never-added", [70])]) == []


def test_adding_a_live_request_twice_is_an_error(text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    detok.add_request("r")
    with pytest.raises(ValueError, match="'r'"):
        detok.add_request("r")
