"""The edge checks as plain functions: text and ids, JSON bodies, sampling limits and flags,
the worker's plan check and the stop-string automaton."""

from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radixmesh.services.detokenizer.stop_strings import StopMatch, StopStringMatcher, automaton
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.worker.plan_checks import PlanRejectedError, check_plan
from radixmesh.shared.cli_args import add_config_arguments, config_from_args
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.front_door.http_limits import json_depth, parse_json_body
from radixmesh.shared.front_door.openai_protocol import parse_completion_request
from radixmesh.shared.request_checks import (
    decode_refused_rids,
    encode_refused_rids,
)
from radixmesh.shared.sampling_params import HARD_LIMITS, SamplingLimits, SamplingParams
from radixmesh.shared.step import ExtendChunk, NewRequest, PageTableWrite, StepPlan, WorkerInfo
from radixmesh.shared.text_checks import check_json_text, check_rid, check_utf8
from tests.detokenizer.test_stop_strings import reference

# ---- text, ids and JSON ------------------------------------------------------------------


def test_text_must_encode_as_utf8_and_ids_be_printable():
    assert check_utf8("f", "東京 🦀") == "東京 🦀"
    with pytest.raises(InvalidRequestError, match=r"f: is not valid UTF-8: .*U\+D800"):
        check_utf8("f", "ok\ud800")
    assert check_rid("req-1 é") == "req-1 é"
    for bad, why in (("", "non-empty"), ("x" * 257, "at most 256"), ("a\tb", "printable"),
                     ("\udc80", "UTF-8"), (7, "non-empty string")):
        with pytest.raises(InvalidRequestError, match=why):
            check_rid(bad)


def test_json_text_errors_name_the_path_of_the_bad_string():
    check_json_text({"messages": [{"role": "user", "content": "fine 😀"}]})
    with pytest.raises(InvalidRequestError, match=r"^messages\[1\]\.content: "):
        check_json_text({"messages": [{"content": "ok"}, {"content": "\ud83d"}]})
    with pytest.raises(InvalidRequestError, match=r"^body: "):
        check_json_text({"\udfff": 1})


@pytest.mark.parametrize("text, depth", [
    ('1', 0), ('[]', 1), ('{"a": [1, {"b": []}]}', 4),
    ('{"a": "[[[[{{{{"}', 1), ('["\\"]]]]", [[]]]', 3), ('{"k\\\\": [[]]}', 3)])
def test_json_depth_is_exact_and_ignores_brackets_in_strings(text: str, depth: int):
    assert json_depth(text.encode()) == depth


def test_json_bodies_too_deep_malformed_or_not_utf8_are_refused_by_field():
    assert parse_json_body(b'{"a": [[1]]}', 3) == {"a": [[1]]}
    assert parse_json_body(b'{"s": "\\ud83d\\ude00"}', 3) == {"s": "😀"}  # a valid pair
    for raw, where, why in ((b'[[[[1]]]]', "body", "deeper than 3"),
                            (b"[" * 100_000 + b"]" * 100_000, "body", "deeper than 3"),
                            (b'{"a": ', "body", "malformed"),
                            (b'{"a": "\xff"}', "body", "malformed"),
                            (b'{"stop": ["x", "\\udead"]}', "stop[1]", "UTF-8")):
        with pytest.raises(InvalidRequestError, match=why) as refused:
            parse_json_body(raw, 3)
        assert refused.value.field == where


# ---- sampling limits and their flags ---------------------------------------------------------


def test_sampling_limits_count_and_length_with_the_field_named():
    limits = SamplingLimits(max_stop_strings=2, max_stop_string_length=3, max_stop_token_ids=1)
    SamplingParams(stop=("a", "abc"), stop_token_ids=(1,)).validate(10, limits)
    for params, field in ((SamplingParams(stop=("a", "b", "c")), "stop"),
                          (SamplingParams(stop=("abcd",)), "stop"),
                          (SamplingParams(stop_token_ids=(1, 2)), "stop_token_ids"),
                          (SamplingParams(stop=("\ud800",)), "stop")):
        with pytest.raises(InvalidRequestError) as refused:
            params.validate(10, limits)
        assert refused.value.field == field
    body = {"prompt": "hi", "stop": ["a", "b", "c"]}
    with pytest.raises(InvalidRequestError, match="at most 2 stop strings"):
        parse_completion_request(body, "m", limits)


def test_limit_flags_parse_and_are_held_to_the_hard_limits():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, TokenizerConfig)
    args = parser.parse_args(["--max-stop-strings", "4", "--max-json-depth", "8",
                              "--http-header-timeout", "2.5", "--max-connections", "10"])
    config = config_from_args(TokenizerConfig, args)
    assert config.sampling_limits.max_stop_strings == 4
    assert (config.max_json_depth, config.http_header_timeout, config.max_connections) == (
        8, 2.5, 10)
    for flags in ({"max_stop_strings": HARD_LIMITS.max_stop_strings + 1},
                  {"max_stop_string_length": 0}, {"http_body_timeout": 0},
                  {"max_connections": 0}, {"max_json_depth": 0}):
        with pytest.raises(ValueError, match="--"):
            TokenizerConfig(**flags)


# ---- the worker's plan check ---------------------------------------------------------------

INFO = WorkerInfo(model_id="m", num_pages=16, page_size=4, context_len=32, vocab_size=100,
                  eos_token_ids=(2,), kv_dtype="float32", max_running_requests=4)
GREEDY = SamplingParams(temperature=0)


def plan_of(*new: NewRequest, writes=(), extends=()) -> StepPlan:
    return StepPlan(1, new_requests=list(new), page_writes=list(writes), extends=list(extends))


def test_a_plan_within_the_model_passes():
    check_plan(plan_of(NewRequest("a", (5,) * 32, 32, 0, (), GREEDY),
                       writes=[PageTableWrite("a", 0, tuple(range(1, 9)))],
                       extends=[ExtendChunk("a", 0, 32, True)]), INFO)


@pytest.mark.parametrize("plan, rid, why", [
    (plan_of(NewRequest("a", (5,) * 33, 33, 0, (), GREEDY)), "a", "context length"),
    (plan_of(NewRequest("a", (5, 100), 2, 0, (), GREEDY)), "a", "vocabulary"),
    (plan_of(NewRequest("a", (5, -1), 2, 0, (), GREEDY)), "a", "vocabulary"),
    (plan_of(NewRequest("a", (5,), 1, 0, (17,), GREEDY)), "a", "KV pool"),
    (plan_of(NewRequest("a", (5,), 1, 0, (), SamplingParams(top_p=7))), "a", "top_p"),
    (plan_of(writes=[PageTableWrite("b", 7, (1, 2))]), "b", "beyond the 8 pages"),
    (plan_of(writes=[PageTableWrite("b", 0, (0, 99))]), "b", "KV pool"),
    (plan_of(extends=[ExtendChunk("c", 30, 3, True)]), "c", "context length"),
    (plan_of(extends=[ExtendChunk("c", -1, 3, True)]), "c", "context length"),
])
def test_a_plan_past_the_model_is_refused_naming_the_request(plan: StepPlan, rid: str,
                                                              why: str):
    with pytest.raises(PlanRejectedError, match=why) as refused:
        check_plan(plan, INFO)
    assert refused.value.rids == (rid,)
    assert decode_refused_rids(encode_refused_rids(refused.value.rids)) == (rid,)


# ---- the stop-string automaton ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab😀\n", max_size=60),
       stops=st.lists(st.text(alphabet="ab😀\n", min_size=1, max_size=8), max_size=12),
       cuts=st.lists(st.integers(0, 60), max_size=12))
def test_many_overlapping_stops_give_the_reference_outcome(text: str, stops: list[str],
                                                           cuts: list[int]):
    bounds = [0, *sorted({min(c, len(text)) for c in cuts}), len(text)]
    matcher = StopStringMatcher(stops)
    emitted = "".join(matcher.feed(text[a:b]).text for a, b in zip(bounds, bounds[1:],
                                                                    strict=False))
    emitted += matcher.flush()
    assert (emitted, matcher.matched) == reference(stops, text)


def test_the_held_text_is_what_could_still_become_a_stop():
    matcher = StopStringMatcher(["x" * 200 + "!", "ab"])
    assert matcher.feed("q" + "x" * 150).text == "q"  # 150 x's may start the long stop
    assert matcher.feed("xa").text == "x" * 151       # now only "a" may (it starts "ab")
    assert matcher.feed("b tail") == StopMatch("", "ab")
    assert matcher.flush() == ""


def test_requests_with_the_same_stops_share_one_automaton():
    stops = tuple(json.dumps(i) for i in range(10))
    StopStringMatcher(stops)
    assert automaton.cache_info().currsize >= 1
    hits = automaton.cache_info().hits
    StopStringMatcher(list(stops))
    assert automaton.cache_info().hits == hits + 1
