"""Requests through the whole engine: text and chat prompts, the ways a request stops, abort."""

from __future__ import annotations

import random

import pytest

from radixmesh.engine import Completion, Engine

MAX_NEW_TOKENS = 32
QUICK_FOX = {"text": "The quick brown fox", "max_new_tokens": MAX_NEW_TOKENS,
             "temperature": 0, "ignore_eos": True}
CHAT = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Write a haiku about caching."}]


def decode(engine: Engine, completion: Completion) -> str:
    return engine.tokenizer.decode(completion.token_ids)


def test_text_prompt_is_its_tokens(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    prompt_ids = engine.tokenizer.encode(QUICK_FOX["text"])
    by_ids_body = {key: value for key, value in QUICK_FOX.items() if key != "text"}
    by_text, by_ids = engine.generate([QUICK_FOX, by_ids_body | {"input_ids": prompt_ids}])
    assert by_text.token_ids == by_ids.token_ids
    assert by_text.text == by_ids.text == decode(engine, by_text)
    assert by_text.usage.prompt_tokens == len(prompt_ids)
    assert by_text.usage.completion_tokens == MAX_NEW_TOKENS


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_chat_messages_go_through_the_chat_template(arch, tiny_models, make_engine):
    engine = make_engine(tiny_models[arch])
    template_ids = engine.tokenizer.apply_chat_template(CHAT)
    body = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
    by_messages, by_ids = engine.generate([body | {"messages": CHAT},
                                           body | {"input_ids": template_ids}])
    assert by_messages.token_ids == by_ids.token_ids
    assert by_messages.text == decode(engine, by_messages)
    assert by_messages.usage.prompt_tokens == len(template_ids)


def pick_stop_string(text: str) -> tuple[str, int]:
    """A 3-character piece from the middle of `text`, occurring there first, and its start."""
    for start in range(len(text) // 3, len(text) - 3):
        piece = text[start:start + 3]
        if piece.isprintable() and "\ufffd" not in piece and text.find(piece) == start:
            return piece, start
    raise AssertionError(f"no usable stop string in {text!r}")


def test_stop_string_truncates_before_the_match(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    [full] = engine.generate([QUICK_FOX])
    stop, start = pick_stop_string(full.text)

    neighbour = {"input_ids": [1, 5, 9], "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    stopped, other = engine.generate([QUICK_FOX | {"stop": ["never in this text", stop]},
                                      neighbour])
    assert stopped.text == full.text[:start]
    assert stopped.finish.to_dict() == {"type": "stop", "matched": stop}
    # Generation halts at the token that completed the stop string.
    assert 0 < len(stopped.token_ids) < MAX_NEW_TOKENS
    assert stopped.token_ids == full.token_ids[:len(stopped.token_ids)]
    assert stop in decode(engine, stopped)
    assert stop not in engine.tokenizer.decode(stopped.token_ids[:-1])
    assert stopped.usage.completion_tokens == len(stopped.token_ids)
    assert len(other.token_ids) == MAX_NEW_TOKENS, "the neighbour runs on after the stop"


def test_stop_token_ids_stop_even_with_ignore_eos(tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"])
    [full] = engine.generate([QUICK_FOX])
    stop_at = full.token_ids[MAX_NEW_TOKENS // 2]
    first = full.token_ids.index(stop_at)
    [stopped] = engine.generate([QUICK_FOX | {"stop_token_ids": [stop_at]}])
    assert stopped.token_ids == full.token_ids[:first + 1]
    assert stopped.finish.to_dict() == {"type": "stop", "matched": stop_at}
    assert stopped.text == decode(engine, stopped)
    assert stopped.usage.completion_tokens == first + 1


def test_eos_ends_a_request_unless_ignore_eos(tiny_models, make_engine):
    # Random prompts on the tiny Qwen3 reach an EOS often within a few dozen greedy tokens.
    engine = make_engine(tiny_models["qwen3"])
    rng = random.Random(0)
    bodies = [{"input_ids": [rng.randrange(5, engine.info.vocab_size) for _ in range(8)],
               "max_new_tokens": 24, "temperature": 0} for _ in range(16)]
    completions = engine.generate(bodies)
    eos_ended = [(body, c) for body, c in zip(bodies, completions, strict=True)
                 if c.finish.to_dict()["type"] == "stop"]
    assert eos_ended, "no prompt reached an EOS; pick other prompts"

    ignoring = engine.generate([body | {"ignore_eos": True} for body, _ in eos_ended])
    for (_, stopped), full in zip(eos_ended, ignoring, strict=True):
        assert stopped.finish.matched in engine.info.eos_token_ids
        assert stopped.token_ids[-1] == stopped.finish.matched
        assert stopped.text == engine.tokenizer.decode(stopped.token_ids[:-1]), \
            "EOS is a special token: it adds no text"
        assert full.token_ids[:len(stopped.token_ids)] == stopped.token_ids
        assert len(full.token_ids) == 24 and full.finish.to_dict() == {"type": "length"}


# ---- abort -----------------------------------------------------------------------------------

VICTIM = {"input_ids": list(range(5, 45)), "max_new_tokens": MAX_NEW_TOKENS,
          "temperature": 0, "ignore_eos": True}
BYSTANDER = {"input_ids": [1, 5, 9, 14], "max_new_tokens": 8, "temperature": 0,
             "ignore_eos": True}


def advance(engine: Engine, completions: dict[str, Completion]) -> None:
    """One engine step, its deltas added to `completions` (an unknown id raises KeyError)."""
    for delta in engine.step():
        completions[delta.rid].token_ids.extend(delta.token_ids)
        completions[delta.rid].finish = delta.finish


def reached(engine: Engine, victim: Completion, state: str) -> bool:
    partial = engine.scheduler.partial
    return {"waiting": True,
            "prefilling": partial is not None and partial.rid == victim.rid,
            "decoding": len(victim.token_ids) >= 3}[state]


@pytest.mark.parametrize("state", ["waiting", "prefilling", "decoding"])
def test_abort_ends_a_request_and_frees_its_pages(state, tiny_models, make_engine):
    engine = make_engine(tiny_models["llama"], page_size=4, chunked_prefill_size=8)
    completions = {"victim": Completion("victim"), "bystander": Completion("bystander")}
    engine.submit("victim", VICTIM)
    engine.submit("bystander", BYSTANDER)
    while engine.has_work and not reached(engine, completions["victim"], state):
        advance(engine, completions)
    assert reached(engine, completions["victim"], state), f"the victim was never {state}"
    held = len(engine.scheduler.running["victim"].page_ids) if state != "waiting" else 0
    available = engine.scheduler.kv.available_pages

    engine.abort("victim")
    assert "victim" not in engine.scheduler.running
    assert all(req.rid != "victim" for req in engine.scheduler.waiting)
    assert "victim" not in engine.detokenizer
    assert engine.scheduler.kv.available_pages >= available + held
    engine.scheduler.check_integrity()
    engine.abort("victim")  # twice, and an unknown id: both harmless
    engine.abort("nobody")

    # Only the bystander reports from now on.
    del completions["victim"]
    while engine.has_work:
        advance(engine, completions)
    bystander = completions["bystander"]
    assert bystander.finish.to_dict() == {"type": "length"}
    [alone] = engine.generate([BYSTANDER])
    assert bystander.token_ids == alone.token_ids


def test_abort_a_retracted_request(tiny_models, make_engine):
    """A retracted request holds no pages and the worker has dropped it; abort must still end
    it cleanly while it waits to resume."""
    engine = make_engine(tiny_models["llama"], page_size=4, max_total_tokens=64)
    completions = {f"r{i}": Completion(f"r{i}") for i in range(6)}
    for length, rid in enumerate(completions, start=8):
        engine.submit(rid, {"input_ids": list(range(5, 5 + length)), "max_new_tokens": 16,
                            "temperature": 0, "ignore_eos": True})
    retracted: list[str] = []
    while engine.has_work and not retracted:
        advance(engine, completions)
        retracted = [req.rid for req in engine.scheduler.waiting if req.output_ids]
    assert retracted, "the pool should have forced a retraction"

    engine.abort(retracted[0])
    del completions[retracted[0]]
    assert retracted[0] not in engine.detokenizer
    while engine.has_work:
        advance(engine, completions)
    assert all(len(c.token_ids) == 16 for c in completions.values())
