"""Detokenizer.feed decodes a batch's plain deltas in one call into the tokenizer: its output
must be what feeding the deltas one at a time gives, whatever the batch holds."""

from __future__ import annotations

import random

from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenDelta, Usage
from radixmesh.shared.tokenizer import TextTokenizer

LENGTH = FinishReason(FinishKind.LENGTH)
STOPS = {"a": (), "b": ("lo, w",), "c": ("\n",), "d": (), "e": ("🦀",)}
TEXT = "Hello, world! 東京 🦀 and\nmore text follows here."


class TransformersDecode:
    """The tokenizer as transformers decodes, one call per sequence (no `decode_batch`)."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self._hf = tokenizer.hf_tokenizer
        self.encode = tokenizer.encode

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens,
                               clean_up_tokenization_spaces=False)


def run(tokenizer: TextTokenizer | TransformersDecode, batches: list[list[TokenDelta]],
        one_at_a_time: bool) -> list[list[TextDelta]]:
    detok = Detokenizer(tokenizer)
    for rid, stops in STOPS.items():
        detok.add_request(rid, stop=stops, prompt_ids=tokenizer.encode("Say"))
    if one_at_a_time:
        return [[text for delta in batch for text in detok.feed([delta])] for batch in batches]
    return [detok.feed(batch) for batch in batches]


def random_batches(tokenizer: TextTokenizer, seed: int) -> list[list[TokenDelta]]:
    """Each request's ids cut into random chunks, dealt into batches in random order, a rid
    now and then twice in one batch, an unknown rid, and a finish for some."""
    rng = random.Random(seed)
    ids = tokenizer.encode(TEXT)[1:]
    batches: list[list[TokenDelta]] = [[] for _ in range(len(ids))]
    for rid in STOPS:
        step, start = 0, 0
        while start < len(ids):
            size = rng.choice((1, 1, 1, 2, 3))
            batches[step].append(TokenDelta(rid, ids[start:start + size]))
            start += size
            step += rng.choice((0, 1, 1))
        if rid in "ad":
            batches[step].append(TokenDelta(rid, [], LENGTH, Usage(2, len(ids), 0)))
    for batch in batches:
        rng.shuffle(batch)
        batch.append(TokenDelta("unknown", ids[:1]))
    return batches


def test_a_batch_gives_what_its_deltas_give_one_at_a_time(text_tokenizer: TextTokenizer):
    for seed in range(5):
        batches = random_batches(text_tokenizer, seed)
        expected = run(TransformersDecode(text_tokenizer), batches, True)
        assert run(text_tokenizer, batches, False) == expected
        assert run(text_tokenizer, batches, True) == expected


def test_stop_strings_and_finishes_in_a_batch(text_tokenizer: TextTokenizer):
    ids = text_tokenizer.encode(TEXT)[1:]
    out = run(text_tokenizer, [[TokenDelta(rid, ids) for rid in STOPS]], False)[0]
    by_rid = {delta.rid: delta for delta in out}
    assert by_rid["a"].text == by_rid["d"].text == TEXT and by_rid["a"].finish is None
    assert by_rid["b"].text == "Hel" and by_rid["b"].finish.matched == "lo, w"
    assert by_rid["c"].text == TEXT.split("\n")[0] and by_rid["c"].finish.matched == "\n"
    assert by_rid["e"].text == "Hello, world! 東京 "


def test_ids_the_tokenizer_refuses_end_their_request_alone(text_tokenizer: TextTokenizer):
    detok = Detokenizer(text_tokenizer)
    for rid in ("good", "bad", "also-good"):
        detok.add_request(rid)
    ids = text_tokenizer.encode("Hi there")[1:]
    out = detok.feed([TokenDelta("good", ids), TokenDelta("bad", [ids[0], -9]),
                      TokenDelta("also-good", ids)])
    assert [(d.rid, d.text) for d in out if d.finish is None] == [
        ("good", "Hi there"), ("also-good", "Hi there")]
    [bad] = [d for d in out if d.finish is not None]
    assert bad.rid == "bad" and bad.finish.kind is FinishKind.ABORT
    assert bad.finish.status_code == 500


def test_decode_batch_decodes_as_decode(text_tokenizer: TextTokenizer):
    rng = random.Random(0)
    sequences = [[rng.randrange(text_tokenizer.vocab_size) for _ in range(rng.randrange(6))]
                 for _ in range(200)]
    assert text_tokenizer.decode_batch(sequences) == [
        text_tokenizer.hf_tokenizer.decode(ids, skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
        for ids in sequences]
