"""`cache_salt` end to end (issue 20: "two requests with different cache_salt share no page"),
through one real tiered mesh (the tiny model, L3 in files): over the OpenAI HTTP API (the
official client), SGLang's /generate and the public gRPC API, requests of different salts (or
salted and unsalted) share no cached page, in the device pool or in L3 (their pages are
different files), while requests of one salt share their prefix, from L3 too once the
device and host tiers are flushed. A bad salt is a 400 / INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import json
import random
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from radixmesh.client import AsyncClient, RadixMeshClientError
from radixmesh.make_model import make_model
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.text_checks import MAX_CACHE_SALT_LENGTH
from tests.hicache.l3_files import namespace_root, page_files
from tests.hicache.mesh_runs import (
    GREEDY,
    OUTPUT_TOKENS,
    PAGE_SIZE,
    TieredMesh,
    tier_totals,
    tiered_mesh,
    tiers_since,
    wait_idle,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PROMPT_TOKENS = 101
FULL_PAGES = (PROMPT_TOKENS - 1) // PAGE_SIZE  # the last token is always computed
MODEL_NAME = "llama"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TieredMesh]:
    root = tmp_path_factory.mktemp("cache-salt")
    model = make_model(root / MODEL_NAME, "llama")
    with tiered_mesh(model, root / "l3") as tiered:
        yield tiered


def prompt(seed: int) -> list[int]:
    draw = random.Random(seed)
    return [draw.randrange(3, 200) for _ in range(PROMPT_TOKENS)]


def grpc_complete(mesh: TieredMesh, ids: list[int], salt: str | None) -> tuple[int, list[int]]:
    """(cached prompt tokens, output ids) of one greedy request over gRPC."""
    async def send() -> tuple[int, list[int]]:
        async with AsyncClient(mesh.mesh.grpc_address) as client:
            done = await client.complete(input_ids=ids, cache_salt=salt, **GREEDY)
            return done.usage["prompt_tokens_details"]["cached_tokens"], list(done.token_ids)
    return asyncio.run(send())


def http_client(mesh: TieredMesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.mesh.http_url}/v1", api_key="none", max_retries=0)


def http_complete(mesh: TieredMesh, ids: list[int], salt: str | None) -> tuple[int, str]:
    extra = {} if salt is None else {"cache_salt": salt}
    reply = http_client(mesh).completions.create(
        model=MODEL_NAME, prompt=ids, max_tokens=OUTPUT_TOKENS, temperature=0.0,
        extra_body={"ignore_eos": True, **extra})
    return reply.usage.prompt_tokens_details.cached_tokens, reply.choices[0].text


def post(mesh: TieredMesh, path: str, body: dict) -> tuple[int, dict]:
    """(status, JSON answer) of a POST; json.dumps escapes a lone surrogate, as JSON may."""
    request = urllib.request.Request(f"{mesh.mesh.http_url}{path}",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:  # 127.0.0.1 only
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def flush(mesh: TieredMesh) -> None:
    """Empties the device and host tiers (L3 keeps its files)."""
    wait_idle(mesh.mesh)
    request = urllib.request.Request(f"{mesh.mesh.http_url}/flush_cache", method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:  # 127.0.0.1 only
        assert reply.status == 200


def test_salts_share_no_page_and_one_salt_shares_its_prefix_over_every_api(
        mesh: TieredMesh) -> None:
    ids = prompt(1)
    first, output = grpc_complete(mesh, ids, "tenant-a")
    assert first == 0
    # Another salt, and no salt, find nothing of it: over gRPC, HTTP and /generate alike.
    assert grpc_complete(mesh, ids, "tenant-b") == (0, output)
    cached, _ = http_complete(mesh, ids, None)
    assert cached == 0
    cached, _ = http_complete(mesh, ids, "tenant-c")
    assert cached == 0
    status, answer = post(mesh, "/generate", {"input_ids": ids, "cache_salt": "tenant-d",
                                              "sampling_params": {"max_new_tokens": 4}})
    assert status == 200 and answer["meta_info"]["cached_tokens"] == 0
    # The same salt shares, whichever API sent the first request.
    assert grpc_complete(mesh, ids, "tenant-a") == (FULL_PAGES * PAGE_SIZE, output)
    cached, _ = http_complete(mesh, ids, "tenant-c")
    assert cached == FULL_PAGES * PAGE_SIZE
    status, answer = post(mesh, "/generate", {"input_ids": ids, "cache_salt": "tenant-b",
                                              "sampling_params": {"max_new_tokens": 4}})
    assert status == 200 and answer["meta_info"]["cached_tokens"] == FULL_PAGES * PAGE_SIZE
    wait_idle(mesh.mesh)  # the scheduler checks its page accounting at idle
    assert mesh.mesh.process.poll() is None


def test_salted_pages_are_files_of_their_own_and_come_back_from_l3(mesh: TieredMesh) -> None:
    ids = prompt(2)
    files: dict[str | None, set[bytes]] = {}
    for salt in ("tenant-a", "tenant-b", None):
        before = set(page_files(mesh.l3_dir))
        grpc_complete(mesh, ids, salt)
        wait_idle(mesh.mesh)
        files[salt] = set(page_files(mesh.l3_dir)) - before
        assert len(files[salt]) >= FULL_PAGES, (salt, len(files[salt]))
    # The unsalted request's pages are named by the plain chain; the salted ones are not.
    unsalted_keys = set(page_keys(namespace_root(mesh.l3_dir), ids, PAGE_SIZE)[:FULL_PAGES])
    assert unsalted_keys <= files[None]
    assert not unsalted_keys & (files["tenant-a"] | files["tenant-b"])
    # With the device and host tiers emptied, a salt's prefix comes back from its files...
    flush(mesh)
    before = tier_totals(mesh.mesh)
    cached, _ = grpc_complete(mesh, ids, "tenant-b")
    assert cached == FULL_PAGES * PAGE_SIZE
    assert tiers_since(mesh.mesh, before)["storage"] == FULL_PAGES * PAGE_SIZE
    # ... and a new salt still finds nothing, in any tier.
    assert grpc_complete(mesh, ids, "tenant-new")[0] == 0


@pytest.mark.parametrize("salt", ["", "x" * (MAX_CACHE_SALT_LENGTH + 1), 7])
def test_a_bad_salt_is_a_400_naming_it(mesh: TieredMesh, salt: object) -> None:
    with pytest.raises(openai.BadRequestError, match="cache_salt"):
        http_client(mesh).completions.create(model=MODEL_NAME, prompt="hello", max_tokens=2,
                                             extra_body={"cache_salt": salt})
    with pytest.raises(openai.BadRequestError, match="cache_salt"):
        http_client(mesh).chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            extra_body={"cache_salt": salt})
    status, answer = post(mesh, "/generate", {"text": "hello", "cache_salt": salt})
    assert status == 400 and "cache_salt" in json.dumps(answer)


def test_a_salt_that_is_not_utf8_is_a_400(mesh: TieredMesh) -> None:
    """A lone surrogate (the official client cannot even send one: its JSON is UTF-8)."""
    for path, body in (("/v1/completions", {"model": MODEL_NAME, "prompt": "hi"}),
                       ("/generate", {"text": "hi"})):
        status, answer = post(mesh, path, {**body, "cache_salt": "\ud800"})
        assert status == 400 and "cache_salt" in json.dumps(answer), (path, answer)


def test_a_bad_salt_over_grpc_is_invalid_argument(mesh: TieredMesh) -> None:
    for salt in ("", "y" * (MAX_CACHE_SALT_LENGTH + 1)):
        with pytest.raises(RadixMeshClientError) as caught:
            grpc_complete(mesh, [5, 6, 7], salt)
        assert caught.value.code == "INVALID_ARGUMENT" and "cache_salt" in str(caught.value)
    assert grpc_complete(mesh, [5, 6, 7], "fine")[1]  # and the mesh serves on
