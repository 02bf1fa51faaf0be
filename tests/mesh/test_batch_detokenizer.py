"""The detokenizer service's core: registration, stop-string usage, release, pass-through."""

from __future__ import annotations

from pathlib import Path

from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.shared.requests import FinishKind, FinishReason, TokenDelta, Usage
from radixmesh.shared.tokenizer import TextTokenizer

LENGTH = FinishReason(FinishKind.LENGTH)


def test_a_stop_string_finish_gets_usage_and_releases_the_request(mesh_model_path: Path):
    tokenizer = TextTokenizer.from_pretrained(mesh_model_path)
    ids = tokenizer.encode("hello world, and more words after that")
    stop = "and"
    core = BatchDetokenizer(tokenizer)
    core.register("s", [stop], [5, 6], num_prompt_tokens=9)
    core.register("plain", [], [], num_prompt_tokens=3)
    texts = []
    for n, token in enumerate(ids):
        texts += core.process([TokenDelta("s", [token]), TokenDelta("plain", [token])],
                              {"s": 4, "plain": 0} if n == 0 else {})
        if any(t.finish is not None for t in texts):
            break
    stopped = [t for t in texts if t.rid == "s" and t.finish is not None]
    assert len(stopped) == 1 and stopped[0].finish.matched == stop
    assert stopped[0].usage == Usage(9, n + 1, 4)
    assert "".join(t.text for t in texts if t.rid == "s") == "hello world, "
    assert len(core) == 1, "the stopped request is released, the other is not"
    assert core.process([TokenDelta("s", [ids[0]])], {}) == [], "later deltas are dropped"
    final = core.process([TokenDelta("plain", [], LENGTH, Usage(3, n + 1, 0))], {})
    assert final[0].finish == LENGTH and final[0].usage == Usage(3, n + 1, 0)
    assert len(core) == 0


def test_without_a_tokenizer_ids_pass_through_with_empty_text():
    core = BatchDetokenizer(None)
    core.register("r", ["never"], [1, 2], num_prompt_tokens=2)
    out = core.process([TokenDelta("r", [7, 8]), TokenDelta("unknown", [1])], {"r": 0})
    assert [(t.rid, t.text, t.token_ids) for t in out] == [("r", "", [7, 8])]
    out = core.process([TokenDelta("r", [9], LENGTH, Usage(2, 3, 0))], {})
    assert out[0].finish == LENGTH and out[0].usage == Usage(2, 3, 0)
    assert len(core) == 0
