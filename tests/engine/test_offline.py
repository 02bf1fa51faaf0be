"""`radixmesh offline`: every input line gets one output line, in order; a bad line gets an
error naming its field and never stops the good lines around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.offline.runner import parse_lines, run_offline

CONTEXT_LEN = 64
HUGE_INT = "1" + "0" * 400  # a JSON integer no float can hold

GOOD_BODIES: list[dict] = [
    {"input_ids": [1, 5, 9, 14, 20], "max_new_tokens": 6},
    {"text": "The quick brown fox", "max_new_tokens": 5},
    {"messages": [{"role": "user", "content": "Hi there"}], "max_new_tokens": 4},
    {"input_ids": list(range(5, 15)), "max_new_tokens": CONTEXT_LEN - 10},  # fills the context
    {"text": "Once upon a time", "max_new_tokens": 3, "temperature": 0.7, "seed": 5},
    {"input_ids": [3, 1, 4, 1, 5], "max_new_tokens": 2, "stop": None},  # null means default
]

# Each bad line, and the field its error must name.
BAD_LINES: list[tuple[str, str]] = [
    ('{"text": ""}', "text"),
    ('{"text": 7}', "text"),
    ('{"input_ids": []}', "input_ids"),
    ('{"input_ids": [1, 1000000]}', "input_ids"),
    ('{"input_ids": [-1, 2]}', "input_ids"),
    ('{"input_ids": [1, 2.5]}', "input_ids"),
    ('{"messages": []}', "messages"),
    ('{"messages": [{"content": "no role"}]}', "messages[0].role"),
    ('{"max_new_tokens": 4}', "prompt"),
    ('{"text": "a", "input_ids": [1]}', "prompt"),
    (json.dumps({"input_ids": list(range(5, 15)), "max_new_tokens": CONTEXT_LEN - 9}),
     "max_new_tokens"),
    ('{"text": "a", "max_new_tokens": 0}', "max_new_tokens"),
    ('{"text": "a", "temperature": -0.5}', "temperature"),
    ('{"text": "a", "temperature": NaN}', "temperature"),
    ('{"text": "a", "temperature": "hot"}', "temperature"),
    ('{"text": "a", "temperature": ' + HUGE_INT + "}", "temperature"),
    ('{"text": "a", "top_p": 0}', "top_p"),
    ('{"text": "a", "top_p": 1.5}', "top_p"),
    ('{"text": "a", "top_k": -2}', "top_k"),
    ('{"text": "a", "top_k": 2.5}', "top_k"),
    ('{"text": "a", "min_p": 1.5}', "min_p"),
    ('{"text": "a", "frequency_penalty": 2.5}', "frequency_penalty"),
    ('{"text": "a", "presence_penalty": -3}', "presence_penalty"),
    ('{"text": "a", "repetition_penalty": 0}', "repetition_penalty"),
    ('{"text": "a", "seed": -1}', "seed"),
    ('{"text": "a", "stop": [""]}', "stop"),
    ('{"text": "a", "stop_token_ids": [1000000]}', "stop_token_ids"),
    ('{"text": "a", "ignore_eos": "yes"}', "ignore_eos"),
    ('{"text": "a", "temprature": 0.5}', "temprature"),
    ('{"text": "a", "max_new_tokens": 4', "line"),  # truncated JSON
    ('["text", "a"]', "line"),
    ('"just a string"', "line"),
]


@pytest.fixture(scope="module")
def short_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose context window is small enough to overflow with a short request."""
    return make_model(tmp_path_factory.mktemp("short") / "llama", "llama",
                      max_position_embeddings=CONTEXT_LEN)


def deterministic(body: dict) -> dict:
    """Greedy unless `body` says otherwise, and deaf to EOS, so every output length is known."""
    return {"temperature": 0, "ignore_eos": True} | body


def prompt_len(engine: Engine, body: dict) -> int:
    if "input_ids" in body:
        return len(body["input_ids"])
    if "text" in body:
        return len(engine.tokenizer.encode(body["text"]))
    return len(engine.tokenizer.apply_chat_template(body["messages"]))


def test_bad_lines_get_errors_and_good_lines_completions(short_model, make_engine):
    bodies = [deterministic(body) for body in GOOD_BODIES]
    # Good and bad alternate, so every bad line sits between requests that must still run.
    lines = []
    for index, (bad_line, _) in enumerate(BAD_LINES):
        lines += [json.dumps(bodies[index % len(bodies)]), bad_line]
    engine = make_engine(short_model)
    records, summary = run_offline(engine, parse_lines(lines), progress=False)

    assert [record["index"] for record in records] == list(range(len(lines)))
    for (_, field), record in zip(BAD_LINES, records[1::2], strict=True):
        assert set(record) == {"index", "error"}
        error = record["error"]
        assert (error["field"], error["code"], error["type"]) == \
            (field, 400, "invalid_request_error"), error["message"]
    # The good lines' outputs are those they get without any bad line around.
    reference = make_engine(short_model).generate(bodies)
    for index, record in enumerate(records[::2]):
        body, expected = bodies[index % len(bodies)], reference[index % len(bodies)]
        want = body["max_new_tokens"]
        assert len(record["output_ids"]) == want
        assert record["output_ids"] == expected.token_ids
        assert record["text"] == engine.tokenizer.decode(record["output_ids"])
        assert record["finish_reason"] == {"type": "length"}
        usage = record["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == \
            (prompt_len(engine, body), want)
        assert usage["total_tokens"] == usage["prompt_tokens"] + want
    assert (summary.num_requests, summary.num_failed) == (len(lines), len(BAD_LINES))
    assert summary.output_tokens == sum(len(r["output_ids"]) for r in records[::2])


def test_default_max_new_tokens_shrinks_to_the_context(short_model, make_engine):
    """A limit the client never chose must not fail the request; it takes the room left."""
    prompt = list(range(5, 5 + CONTEXT_LEN - 3))
    [record], _ = run_offline(make_engine(short_model),
                              [{"input_ids": prompt, "temperature": 0, "ignore_eos": True}],
                              progress=False)
    assert len(record["output_ids"]) == 3
    assert record["finish_reason"] == {"type": "length"}


def test_blank_lines_are_skipped():
    bodies = parse_lines(['{"text": "a"}\n', "\n", "   \n", '{"text": "b"}\n'])
    assert bodies == [{"text": "a"}, {"text": "b"}]


# ---- the CLI, as a user runs it --------------------------------------------------------------

CLI_BAD_LINE = 2
CLI_BODIES: list[dict] = [
    deterministic({"text": "The quick brown fox", "max_new_tokens": 8}),
    deterministic({"text": "The quick brown fox jumps over", "max_new_tokens": 8}),
    {"text": "", "max_new_tokens": 8},  # CLI_BAD_LINE
    deterministic({"input_ids": [1, 5, 9, 14, 20, 3, 7, 11, 13, 17, 19, 23], "max_new_tokens": 5}),
    deterministic({"messages": [{"role": "user", "content": "Write a haiku"}], "max_new_tokens": 6}),
]
CLI_FLAGS = {
    "defaults": [],
    "tuned": ["--page-size", "4", "--chunked-prefill-size", "16", "--schedule-policy", "lpm",
              "--disable-radix-cache"],
}


@pytest.mark.parametrize("flags", CLI_FLAGS)
def test_cli_writes_one_line_per_request(flags, tiny_models, make_engine, tmp_path):
    model_path = tiny_models["llama"]
    requests, results = tmp_path / "requests.jsonl", tmp_path / "results.jsonl"
    requests.write_text("".join(json.dumps(body) + "\n" for body in CLI_BODIES))
    command = [sys.executable, "-P", "-m", "radixmesh.cli", "offline", "--model-path", str(model_path),
               "--input", str(requests), "--output", str(results), "--no-progress",
               *CLI_FLAGS[flags]]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [record["index"] for record in records] == list(range(len(CLI_BODIES)))
    assert records[CLI_BAD_LINE]["error"]["field"] == "text"
    # Greedy decoding gives the engine's tokens whatever the paging and scheduling flags.
    expected = make_engine(model_path).generate(
        [body for index, body in enumerate(CLI_BODIES) if index != CLI_BAD_LINE])
    got = [record for index, record in enumerate(records) if index != CLI_BAD_LINE]
    assert [r["output_ids"] for r in got] == [c.token_ids for c in expected]
    assert [r["text"] for r in got] == [c.text for c in expected]
    assert f"requests: {len(CLI_BODIES)} (1 failed)" in run.stderr
    assert "tok/s" in run.stderr
    assert "cache hit rate:" in run.stderr
    if "--disable-radix-cache" in CLI_FLAGS[flags]:
        assert "cache hit rate: 0.000" in run.stderr
