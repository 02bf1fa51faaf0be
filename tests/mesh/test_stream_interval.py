"""`--stream-interval N` through a real front door (TokenizerServer: gRPC + HTTP) over a
MiniMesh (the real Scheduler, NullWorker and Detokenizer): a stream gets its first token at
once and then an update every N tokens, ceil-ish n/N messages, with exactly the text, token ids,
finish and usage it gets with N = 1, through the gRPC client and the official `openai` client.

Message counts are bounded from above only: a reader that falls behind gets even fewer (the
backlog is merged), never more.
"""

from __future__ import annotations

import asyncio
import math

import openai
import pytest

from radixmesh.client import AsyncClient
from radixmesh.client.types import GenerateChunk
from tests.mesh.front_door_harness import FrontDoor, running_front_door

pytestmark = pytest.mark.timeout(120)
NUM_TOKENS = 17
STOP = {"stop": ["012"]}  # the null worker's text "#$%&'()*+,-./0123..." stops before "012"


def most_messages(num_tokens: int, interval: int) -> int:
    """The first token alone, then one update per `interval` tokens (the finish in the last)."""
    return 1 + math.ceil((num_tokens - 1) / interval)


async def grpc_streams(door: FrontDoor) -> list[list[GenerateChunk]]:
    """The chunks of a plain request and of one a stop string ends, as the client yields them."""
    async with AsyncClient(door.grpc_address) as client:
        plain = [chunk async for chunk in client.generate(text="hi", max_new_tokens=NUM_TOKENS)]
        stopped = [chunk async for chunk in client.generate(text="hi", max_new_tokens=200,
                                                            **STOP)]
    return [plain, stopped]


def sse_streams(base_url: str) -> tuple[list, list]:
    client = openai.OpenAI(base_url=base_url, api_key="x")
    completion = list(client.completions.create(
        model="tiny-llama", prompt="hi", max_tokens=NUM_TOKENS, stream=True,
        stream_options={"include_usage": True}))
    chat = list(client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=NUM_TOKENS,
        stream=True, extra_body=STOP))
    return completion, chat


def whole(chunks: list) -> tuple[list[int], str, dict | None, dict | None]:
    return ([token for chunk in chunks for token in chunk.token_ids],
            "".join(chunk.text for chunk in chunks), chunks[-1].finish, chunks[-1].usage)


async def streamed(interval: int) -> tuple[list[list], tuple[list, list]]:
    async with running_front_door(stream_interval=interval) as door:
        grpc_chunks = await grpc_streams(door)
        sse_chunks = await asyncio.to_thread(sse_streams, door.http_url + "/v1")
    return grpc_chunks, sse_chunks


def test_stream_interval_four_sends_fewer_messages_with_the_same_output() -> None:
    (grpc_one, sse_one), (grpc_four, sse_four) = (asyncio.run(streamed(interval))
                                                  for interval in (1, 4))
    plain_one, stopped_one = grpc_one
    plain_four, stopped_four = grpc_four
    assert len(whole(plain_one)[0]) == NUM_TOKENS
    assert whole(plain_four) == whole(plain_one)
    assert whole(stopped_four) == whole(stopped_one)
    assert whole(stopped_one)[1] == "#$%&'()*+,-./" and stopped_one[-1].finish["type"] == "stop"
    assert len(plain_four) <= most_messages(NUM_TOKENS, 4) < NUM_TOKENS
    assert len(stopped_four) <= most_messages(len(whole(stopped_one)[0]), 4)
    assert plain_four[0].token_ids == plain_one[0].token_ids[:1] or len(plain_four) == 1

    (completion_one, chat_one), (completion_four, chat_four) = sse_one, sse_four
    text_chunks = [chunk for chunk in completion_four if chunk.choices and chunk.choices[0].text]
    assert len(text_chunks) <= most_messages(NUM_TOKENS, 4)
    assert ("".join(c.choices[0].text for c in completion_four if c.choices)
            == "".join(c.choices[0].text for c in completion_one if c.choices))
    assert completion_four[-1].usage.completion_tokens == NUM_TOKENS
    assert completion_four[-1].usage == completion_one[-1].usage
    chat_text = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                 for chunks in (chat_one, chat_four)]
    assert chat_text == ["#$%&'()*+,-./"] * 2
    assert ([c.choices[0].finish_reason for c in chat_four if c.choices][-1]
            == [c.choices[0].finish_reason for c in chat_one if c.choices][-1] == "stop")
    content_chunks = [c for c in chat_four if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) <= most_messages(len(whole(stopped_one)[0]), 4)
