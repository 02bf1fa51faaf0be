"""IncrementalDetokenizer: streamed text must equal the text decoded at once."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from radixmesh.services.detokenizer.incremental import IncrementalDetokenizer
from radixmesh.shared.tokenizer import TextTokenizer

VOCAB = 512
MULTIBYTE_TEXT = "Crème brûlée 東京タワー 🦀🇫🇷 👩‍💻 done."
# Fast enough for 2 CPUs: each example decodes a few short windows.
SETTINGS = settings(max_examples=150, deadline=None)


def stream(decoder: IncrementalDetokenizer, chunks: list[list[int]]) -> list[str]:
    return [decoder.feed(chunk) for chunk in chunks]


def split(ids: list[int], cuts: list[int]) -> list[list[int]]:
    """`ids` cut at the given positions (sorted, deduplicated, any in range)."""
    bounds = [0, *sorted({c % (len(ids) + 1) for c in cuts}), len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@SETTINGS
@given(ids=st.lists(st.integers(0, VOCAB - 1), max_size=40),
       cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_random_ids_stream_to_the_text_decoded_at_once(
        text_tokenizer: TextTokenizer, ids: list[int], cuts: list[int]):
    decoder = IncrementalDetokenizer(text_tokenizer)
    deltas = stream(decoder, split(ids, cuts))
    assert "".join(deltas) + decoder.flush() == text_tokenizer.decode(ids)


@SETTINGS
@given(text=st.text(max_size=30), cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_real_text_never_streams_a_broken_character(
        text_tokenizer: TextTokenizer, text: str, cuts: list[int]):
    # Text spelling a special token ("<|im_end|>") encodes to that token, which decoding
    # skips: the round trip holds for everything else.
    special = text_tokenizer.hf_tokenizer.all_special_tokens
    assume(not any(token in text for token in special))
    ids = text_tokenizer.encode(text)
    decoder = IncrementalDetokenizer(text_tokenizer)
    deltas = stream(decoder, split(ids, cuts))
    assert all("\ufffd" not in delta for delta in deltas)
    assert "".join(deltas) + decoder.flush() == text


def test_one_token_at_a_time_through_multibyte_characters(text_tokenizer: TextTokenizer):
    ids = text_tokenizer.encode(MULTIBYTE_TEXT)
    decoder = IncrementalDetokenizer(text_tokenizer)
    deltas = stream(decoder, [[token_id] for token_id in ids])
    assert "".join(deltas) == MULTIBYTE_TEXT
    assert decoder.flush() == ""
    assert deltas.count("") > 1  # some tokens completed no character and were held back


def test_partial_character_is_held_until_complete(text_tokenizer: TextTokenizer):
    ids = text_tokenizer.encode("🦀")[1:]  # without the BOS
    assert len(ids) > 1
    decoder = IncrementalDetokenizer(text_tokenizer)
    assert [decoder.feed([token_id]) for token_id in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.feed(ids[-1:]) == "🦀"


def test_flush_releases_a_character_that_never_completes(text_tokenizer: TextTokenizer):
    first_piece = text_tokenizer.encode("🦀")[1]
    decoder = IncrementalDetokenizer(text_tokenizer)
    assert decoder.feed([first_piece]) == ""
    assert decoder.flush() == text_tokenizer.decode([first_piece])
    assert decoder.flush() == ""


def test_special_tokens_are_skipped(text_tokenizer: TextTokenizer):
    im_end = text_tokenizer.hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    decoder = IncrementalDetokenizer(text_tokenizer)
    ids = text_tokenizer.encode("Hi")[1:]
    assert decoder.feed(ids) == "Hi"
    assert decoder.feed([im_end]) == ""
    assert decoder.flush() == ""


def test_prompt_context_does_not_leak_into_the_output(text_tokenizer: TextTokenizer):
    prompt = text_tokenizer.encode("The answer is")
    output = text_tokenizer.encode(" forty-two, 四十二.")[1:]
    decoder = IncrementalDetokenizer(text_tokenizer, prompt_ids=prompt)
    text = "".join(decoder.feed([token_id]) for token_id in output) + decoder.flush()
    assert text == " forty-two, 四十二."


def test_prompt_ending_in_a_broken_character_is_not_used_as_context(
        text_tokenizer: TextTokenizer):
    prompt = text_tokenizer.encode("東")[:-1]  # cut inside the character
    assert text_tokenizer.decode(prompt).endswith("\ufffd")
    output = text_tokenizer.encode("ok")[1:]
    decoder = IncrementalDetokenizer(text_tokenizer, prompt_ids=prompt)
    assert "".join(decoder.feed([token_id]) for token_id in output) + decoder.flush() == "ok"
