"""The soak's steady load: closed-loop clients over gRPC and the OpenAI HTTP API, and the
tally of how every request ended.

Each request has a deadline. A gRPC request carries it (the mesh should abort it there); an
HTTP request cannot (the OpenAI API has no deadline field), so the mesh must end it on its
own. Either way the client waits `deadline + grace` at most: a request that has neither
completed nor errored by then is *lost*, the one outcome the soak must never see.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from radixmesh.client import AsyncClient, RadixMeshClientError

RETRY_PAUSE_S = 0.2  # after a failed request: a down mesh is not hammered in a tight loop
LOST_SAMPLES = 20


@dataclass(frozen=True)
class LoadSettings:
    grpc_address: str
    http_url: str
    model: str
    deadline: float
    grace: float
    max_tokens: tuple[int, int] = (8, 64)


@dataclass
class Tally:
    """Every request's outcome: "ok", "error:<api>:<status or kind>", or "lost"."""

    outcomes: Counter = field(default_factory=Counter)
    by_api: dict[str, Counter] = field(default_factory=dict)
    ok_spans: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of oks
    lost_samples: list[dict] = field(default_factory=list)

    def record(self, api: str, outcome: str, start: float, detail: str = "") -> None:
        end = time.monotonic()
        self.outcomes[outcome] += 1
        self.by_api.setdefault(api, Counter())[outcome] += 1
        if outcome == "ok":
            self.ok_spans.append((start, end))
        elif outcome == "lost" and len(self.lost_samples) < LOST_SAMPLES:
            self.lost_samples.append({"api": api, "started_s": round(start, 3),
                                      "detail": detail})

    def first_ok_after(self, when: float) -> float | None:
        """End time of the first successful request started after `when`."""
        ends = [end for start, end in self.ok_spans if start >= when]
        return min(ends) if ends else None

    def summary(self) -> dict:
        errors = {kind: n for kind, n in sorted(self.outcomes.items())
                  if kind.startswith("error:")}
        return {"total": sum(self.outcomes.values()), "ok": self.outcomes["ok"],
                "lost": self.outcomes["lost"], "errors": errors,
                "by_api": {api: dict(sorted(counts.items()))
                           for api, counts in sorted(self.by_api.items())}}


async def grpc_client(settings: LoadSettings, tally: Tally, until: float,
                      rng: random.Random) -> None:
    async with AsyncClient(settings.grpc_address) as client:
        while time.monotonic() < until:
            start = time.monotonic()
            outcome = await _grpc_request(client, settings, rng)
            tally.record("grpc", outcome, start, "gRPC Generate")
            if outcome != "ok":
                await asyncio.sleep(RETRY_PAUSE_S)


async def _grpc_request(client: AsyncClient, settings: LoadSettings,
                        rng: random.Random) -> str:
    try:
        completion = await asyncio.wait_for(client.complete(
            text=_prompt(rng), max_new_tokens=rng.randint(*settings.max_tokens),
            temperature=0.0, timeout=settings.deadline), settings.deadline + settings.grace)
    except TimeoutError:
        return "lost"
    except RadixMeshClientError as error:
        return f"error:grpc:{error.code}"
    kind = (completion.finish or {}).get("type")
    return "ok" if kind in ("length", "stop") else f"error:grpc:finish-{kind}"


async def http_client(settings: LoadSettings, tally: Tally, until: float,
                      rng: random.Random) -> None:
    timeout = aiohttp.ClientTimeout(total=settings.deadline + settings.grace)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < until:
            start, stream = time.monotonic(), rng.random() < 0.5
            outcome = await _http_request(session, settings, rng, stream)
            tally.record("http", outcome, start, f"POST /v1/completions stream={stream}")
            if outcome != "ok":
                await asyncio.sleep(RETRY_PAUSE_S)


async def _http_request(session: aiohttp.ClientSession, settings: LoadSettings,
                        rng: random.Random, stream: bool) -> str:
    body = {"model": settings.model, "prompt": _prompt(rng), "temperature": 0.0,
            "max_tokens": rng.randint(*settings.max_tokens), "stream": stream}
    try:
        async with session.post(f"{settings.http_url}/v1/completions", json=body) as reply:
            if reply.status != 200:
                await reply.read()
                return f"error:http:{reply.status}"
            return await (_read_sse(reply) if stream else _read_json(reply))
    except TimeoutError:  # aiohttp's total timeout: deadline + grace
        return "lost"
    except aiohttp.ClientConnectorError:
        return "error:http:connect"
    except (aiohttp.ClientError, ConnectionError) as error:
        return f"error:http:{type(error).__name__}"


async def _read_json(reply: aiohttp.ClientResponse) -> str:
    choices = (await reply.json()).get("choices") or [{}]
    reason = choices[0].get("finish_reason")
    return "ok" if reason in ("length", "stop") else f"error:http:finish-{reason}"


async def _read_sse(reply: aiohttp.ClientResponse) -> str:
    """Reads an SSE stream to `[DONE]`; an error event in it (the mesh failed after the
    headers went out) is the request's outcome."""
    outcome = "error:http:no-finish"
    async for raw in reply.content:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return outcome
        event = json.loads(line[len("data: "):])
        if "error" in event:
            outcome = f"error:http:stream-{event['error'].get('code')}"
        for choice in event.get("choices", []):
            reason = choice.get("finish_reason")
            if reason is not None:
                outcome = "ok" if reason in ("length", "stop") else f"error:http:finish-{reason}"
    return "error:http:stream-cut"  # the connection closed before [DONE]


def _prompt(rng: random.Random) -> str:
    words = ("the", "mesh", "keeps", "serving", "while", "a", "service", "restarts", "and")
    return " ".join(rng.choice(words) for _ in range(rng.randint(4, 40)))
