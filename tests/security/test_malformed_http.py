"""Malformed HTTP requests, table-driven: every case gets a 4xx with OpenAI's error body naming
the field at fault, and the mesh serves a normal request afterwards (issue 18).

Cases the official `openai` client can send (a JSON object with the model and the prompt or
messages) go through it, the rest (broken JSON, bodies without a prompt, SGLang's native
routes) as raw HTTP (aiohttp). All run against the security tests' mesh (`conftest.py`).
"""

from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass

import aiohttp
import openai
import pytest

from tests.mesh.conftest import MeshProcess
from tests.security.keyed_mesh import KEYS, MODEL

pytestmark = pytest.mark.timeout(60)
COMPLETIONS, CHAT, GENERATE, ABORT = ("/v1/completions", "/v1/chat/completions", "/generate",
                                      "/abort_request")
DROP = object()  # removes a key of the base body
BASE = {COMPLETIONS: {"model": MODEL, "prompt": "hi", "max_tokens": 2},
        CHAT: {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        GENERATE: {"text": "hi", "sampling_params": {"max_new_tokens": 2}},
        ABORT: {"rid": "nobody"}}
USER = {"role": "user", "content": "hi"}


@dataclass(frozen=True)
class Case:
    endpoint: str
    body: dict | bytes  # a dict: changes to the endpoint's base body; bytes: sent as they are
    field: str          # the `param` the error must name
    status: int = 400

    def payload(self) -> dict | bytes:
        if isinstance(self.body, bytes):
            return self.body
        merged = {**BASE[self.endpoint], **self.body}
        return {key: value for key, value in merged.items() if value is not DROP}


def c(body: dict | bytes, field: str, status: int = 400) -> Case:
    return Case(COMPLETIONS, body, field, status)


def h(body: dict | bytes, field: str, status: int = 400) -> Case:
    return Case(CHAT, body, field, status)


def g(body: dict | bytes, field: str) -> Case:
    return Case(GENERATE, body, field)


def sp(**params: object) -> dict:
    """A /generate body change: these sampling_params."""
    return {"sampling_params": {"max_new_tokens": 2, **params}}


def msg(**message: object) -> dict:
    """A chat body change: one message, the user's with these keys changed."""
    return {"messages": [{key: value for key, value in {**USER, **message}.items()
                          if value is not DROP}]}


CASES = [
    # ---- /v1/completions: the prompt
    c({"prompt": DROP}, "prompt"), c({"prompt": None}, "prompt"), c({"prompt": 5}, "prompt"),
    c({"prompt": []}, "prompt"), c({"prompt": ["a", "b"]}, "prompt"),
    c({"prompt": [[1, 2], [3]]}, "prompt"), c({"prompt": [1, "a"]}, "prompt"),
    c({"prompt": [-1]}, "prompt"), c({"prompt": [10**9]}, "prompt"), c({"prompt": ""}, "prompt"),
    c({"prompt": {"text": "hi"}}, "prompt"), c({"prompt": [[1, "x"]]}, "prompt"),
    # ---- the model
    c({"model": "gpt-4"}, "model", 404), c({"model": 5}, "model"),
    h({"model": "other"}, "model", 404),
    # ---- sampling, by type and by range
    c({"max_tokens": 0}, "max_tokens"), c({"max_tokens": -5}, "max_tokens"),
    c({"max_tokens": "8"}, "max_tokens"), c({"max_tokens": 2.5}, "max_tokens"),
    c({"max_tokens": 10**12}, "max_tokens"), c({"max_tokens": 100000}, "max_tokens"),
    c({"temperature": -1}, "temperature"), c({"temperature": "hot"}, "temperature"),
    c({"top_p": 0}, "top_p"), c({"top_p": 1.5}, "top_p"), c({"top_k": -2}, "top_k"),
    c({"top_k": 1.5}, "top_k"), c({"min_p": 2}, "min_p"), c({"seed": -1}, "seed"),
    c({"seed": "x"}, "seed"), c({"seed": 2**64}, "seed"),
    c({"frequency_penalty": 3}, "frequency_penalty"),
    c({"presence_penalty": -3}, "presence_penalty"),
    c({"repetition_penalty": 0}, "repetition_penalty"), c({"ignore_eos": "true"}, "ignore_eos"),
    # ---- stops
    c({"stop": 5}, "stop"), c({"stop": ["a", 1]}, "stop[1]"), c({"stop": [""]}, "stop"),
    c({"stop": ["x"] * 17}, "stop"), c({"stop": ["x" * 300]}, "stop"),
    c({"stop_token_ids": [-1]}, "stop_token_ids"), c({"stop_token_ids": "1"}, "stop_token_ids"),
    c({"stop_token_ids": [1] * 65}, "stop_token_ids"),
    # ---- options we do not implement, at other than their defaults
    c({"n": 2}, "n"), c({"best_of": 3}, "best_of"), c({"echo": True}, "echo"),
    c({"logprobs": 5}, "logprobs"), c({"suffix": "tail"}, "suffix"),
    c({"logit_bias": {"1": 5}}, "logit_bias"),
    # ---- streaming options and ids
    c({"stream": "yes"}, "stream"),
    c({"stream_options": {"include_usage": True}}, "stream_options"),
    c({"stream": True, "stream_options": {"include_usage": "yes"}},
      "stream_options.include_usage"),
    c({"stream": True, "stream_options": {"bogus": 1}}, "stream_options.bogus"),
    c({"stream": True, "stream_options": {"continuous_usage_stats": True}},
      "stream_options.continuous_usage_stats"),
    c({"rid": ""}, "rid"), c({"rid": 5}, "rid"), c({"rid": "a\nb"}, "rid"),
    c({"rid": "r" * 300}, "rid"), c({"user": 5}, "user"),
    # ---- unknown parameters
    c({"frobnicate": 1}, "frobnicate"), c({"max_token": 5}, "max_token"),
    c({"messages": [USER]}, "messages"),
    # ---- /v1/chat/completions: messages, roles, content
    h({"messages": DROP}, "messages"), h({"messages": "hello"}, "messages"),
    h({"messages": []}, "messages"), h({"messages": ["hi"]}, "messages[0]"),
    h({"messages": [USER, 5]}, "messages[1]"),
    h(msg(content=DROP), "messages[0].content"), h(msg(role=DROP), "messages[0].role"),
    h(msg(role="hacker"), "messages[0].role"), h(msg(role="tool"), "messages[0].role"),
    h(msg(role="function"), "messages[0].role"), h(msg(role=5), "messages[0].role"),
    h(msg(role=""), "messages[0].role"),
    h({"messages": [USER, {"role": "assistant", "content": None}]}, "messages[1].content"),
    h(msg(content=5), "messages[0].content"), h(msg(content={"text": "x"}), "messages[0].content"),
    h(msg(content=[{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]),
      "messages[0].content"),
    h(msg(content=[{"type": "input_audio", "input_audio": {}}]), "messages[0].content"),
    h(msg(content=[{"type": "text"}]), "messages[0].content[0].text"),
    h(msg(content=[{"type": "text", "text": 1}]), "messages[0].content[0].text"),
    h(msg(content=[{"type": "text", "text": "a", "extra": 1}]), "messages[0].content[0].extra"),
    h(msg(content=["plain"]), "messages[0].content[0]"),
    h(msg(tool_calls=[{"id": "1", "type": "function"}]), "messages[0].tool_calls"),
    h(msg(name=5), "messages[0].name"),
    # ---- chat options
    h({"max_completion_tokens": 0}, "max_completion_tokens"), h({"max_tokens": -1}, "max_tokens"),
    h({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    h({"tool_choice": "auto"}, "tool_choice"), h({"functions": [{"name": "f"}]}, "functions"),
    h({"function_call": "auto"}, "function_call"),
    h({"response_format": {"type": "json_object"}}, "response_format"),
    h({"logprobs": True}, "logprobs"), h({"top_logprobs": 5}, "top_logprobs"), h({"n": 3}, "n"),
    h({"store": True}, "store"), h({"modalities": ["audio"]}, "modalities"),
    h({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    h({"reasoning_effort": "high"}, "reasoning_effort"), h({"temperature": []}, "temperature"),
    h({"stop": {"a": 1}}, "stop"), h({"seed": 1.5}, "seed"), h({"stream": 1}, "stream"),
    h({"metadata": {"a": 1}}, "metadata.a"), h({"service_tier": "flex"}, "service_tier"),
    h({"presence_penalty": "0"}, "presence_penalty"),
    h({"chat_template_kwargs": {}}, "chat_template_kwargs"), h({"prompt": "hi"}, "prompt"),
    # ---- SGLang's /generate
    g({"text": DROP}, "text"), g({"input_ids": [1]}, "text"), g({"text": 5}, "text"),
    g({"text": ["a", "b"]}, "text"), g({"text": ""}, "text"),
    g({"text": DROP, "input_ids": [[1], [2]]}, "input_ids"),
    g({"text": DROP, "input_ids": "abc"}, "input_ids"),
    g({"text": DROP, "input_ids": [1.5]}, "input_ids[0]"),
    g({"text": DROP, "input_ids": []}, "input_ids"),
    g({"text": DROP, "input_ids": [10**9]}, "input_ids"),
    g({"sampling_params": []}, "sampling_params"),
    g(sp(max_new_tokens=0), "sampling_params.max_new_tokens"),
    g(sp(max_new_tokens=10**6), "sampling_params.max_new_tokens"),
    g(sp(temperature=-0.5), "sampling_params.temperature"),
    g(sp(top_p="x"), "sampling_params.top_p"), g(sp(n=2), "sampling_params.n"),
    g(sp(regex="a+"), "sampling_params.regex"),
    g(sp(json_schema="{}"), "sampling_params.json_schema"),
    g(sp(min_new_tokens=5), "sampling_params.min_new_tokens"),
    g(sp(bogus=1), "sampling_params.bogus"),
    g(sp(seed=1, sampling_seed=2), "sampling_params.sampling_seed"),
    g(sp(stop=[1]), "sampling_params.stop[0]"),
    g(sp(stop_token_ids=[-3]), "sampling_params.stop_token_ids"),
    g(sp(ignore_eos=1), "sampling_params.ignore_eos"), g({"stream": "no"}, "stream"),
    g({"rid": []}, "rid"), g({"return_logprob": True}, "return_logprob"),
    g({"lora_path": "adapter"}, "lora_path"), g({"image_data": "x.png"}, "image_data"),
    g({"modalities": []}, "modalities"),
    # ---- /abort_request
    Case(ABORT, {"rid": DROP}, "rid"), Case(ABORT, {"rid": 5}, "rid"),
    Case(ABORT, {"abort_all": True}, "abort_all"), Case(ABORT, {"extra": 1}, "extra"),
    # ---- bodies that are not a JSON object of valid text
    *(Case(endpoint, raw, field) for endpoint in (COMPLETIONS, CHAT, GENERATE, ABORT)
      for raw, field in ((b"{", "body"), (b"[]", "body"), (b'"x"', "body"), (b"", "body"))),
    c(b'{"model": "tiny-llama", "prompt": "\\ud800"}', "prompt"),
    c(b'{"model": "tiny-llama", "prompt": "\xff"}', "body"),
    c(b'{"model": "tiny-llama", "prompt": "hi", "temperature": NaN}', "temperature"),
    h(b'{"messages": ' + b"[" * 40 + b"]" * 40 + b"}", "body"),
    g(b'{"text": "hi", "sampling_params": {"temperature": Infinity}}',
      "sampling_params.temperature"),
    c(b'{"prompt": "' + b"x" * (1 << 20) + b'"}', "body", 413),
]


def case_id(case: Case) -> str:
    shown = case.body[:40] if isinstance(case.body, bytes) else json.dumps(
        case.body, default=lambda _: "DROP")[:60]
    return f"{case.endpoint}:{shown}"


def sendable_by_openai(case: Case) -> bool:
    body = case.payload()
    required = "prompt" if case.endpoint == COMPLETIONS else "messages"
    return (case.endpoint in (COMPLETIONS, CHAT) and isinstance(body, dict)
            and "model" in body and required in body)


async def send_raw(url: str, case: Case) -> tuple[int, dict]:
    payload = case.payload()
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"Authorization": f"Bearer {KEYS[0]}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, \
            session.post(url + case.endpoint, data=data, headers=headers) as answer:
        return answer.status, await answer.json(content_type=None)


def send_openai(client: openai.OpenAI, case: Case) -> tuple[int, dict]:
    """The case through the official client: its parameters as such, the rest as extra_body."""
    create = client.completions.create if case.endpoint == COMPLETIONS else \
        client.chat.completions.create
    known = inspect.signature(create).parameters
    body = case.payload()
    kwargs = {key: value for key, value in body.items() if key in known}
    extra = {key: value for key, value in body.items() if key not in known}
    try:
        create(**kwargs, extra_body=extra or None)
    except openai.APIStatusError as error:
        return error.status_code, {"error": error.body}
    raise AssertionError(f"accepted: {body}")


@pytest.fixture(scope="module")
def client(keyed_mesh: MeshProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=keyed_mesh.http_url + "/v1", api_key=KEYS[0], max_retries=0)


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 100
    assert sum(sendable_by_openai(case) for case in CASES) >= 60


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_malformed_request_gets_a_4xx_naming_the_field(case: Case, client: openai.OpenAI,
                                                        keyed_mesh: MeshProcess) -> None:
    if sendable_by_openai(case):
        status, body = send_openai(client, case)
    else:
        status, body = asyncio.run(send_raw(keyed_mesh.http_url, case))
    assert status == case.status, body
    error = body["error"]
    assert error["param"] == case.field, error
    assert case.field in error["message"] and error["code"] == case.status
    assert error["type"] in ("invalid_request_error", "not_found_error")


def test_the_mesh_serves_a_normal_request_afterwards(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(model=MODEL, messages=[USER], max_tokens=3)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 3
