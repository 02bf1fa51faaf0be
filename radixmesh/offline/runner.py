"""Reads request lines, runs them through the in-process Engine, writes one output line each.

A bad line gets its error on its own output line; every other line is still served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass

from tqdm import tqdm

from radixmesh.engine import Completion, Engine
from radixmesh.shared.errors import InvalidRequestError, http_status, openai_type


@dataclass
class OfflineSummary:
    num_requests: int
    num_failed: int
    prompt_tokens: int
    output_tokens: int
    seconds: float
    cache_hit_rate: float

    @property
    def output_throughput(self) -> float:
        return self.output_tokens / self.seconds if self.seconds else 0.0

    @property
    def total_throughput(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        return [
            f"requests: {self.num_requests} ({self.num_failed} failed)",
            f"tokens: {self.prompt_tokens} prompt, {self.output_tokens} output",
            f"time: {self.seconds:.2f} s",
            f"throughput: {self.output_throughput:.1f} output tok/s, "
            f"{self.total_throughput:.1f} total tok/s",
            f"cache hit rate: {self.cache_hit_rate:.3f}",
        ]


def parse_lines(lines: Iterable[str]) -> list[dict | InvalidRequestError]:
    """One entry per non-blank line: the request body, or the error that makes it unusable."""
    bodies: list[dict | InvalidRequestError] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as error:
            bodies.append(InvalidRequestError("line", f"line {number} is not JSON: {error}"))
            continue
        if not isinstance(body, dict):
            bodies.append(InvalidRequestError("line", f"line {number} is not a JSON object"))
            continue
        bodies.append(body)
    return bodies


def run_offline(engine: Engine, bodies: list[dict | InvalidRequestError],
                progress: bool = True) -> tuple[list[dict], OfflineSummary]:
    records: list[dict | None] = [None] * len(bodies)
    completions: dict[str, Completion] = {}
    started = time.perf_counter()
    for index, body in enumerate(bodies):
        rid = f"offline-{index}"
        try:
            if isinstance(body, InvalidRequestError):
                raise body
            engine.submit(rid, body)
        except InvalidRequestError as error:
            records[index] = error_record(index, error)
            continue
        completions[rid] = Completion(rid)
    with tqdm(total=len(completions), disable=not progress, unit="req", desc="offline") as bar:
        engine.run_until_done(completions, on_finish=lambda _: bar.update(1))
    seconds = time.perf_counter() - started
    for index in range(len(bodies)):
        completion = completions.get(f"offline-{index}")
        if completion is not None:
            records[index] = completion_record(index, completion)
    summary = OfflineSummary(
        num_requests=len(bodies), num_failed=len(bodies) - len(completions),
        prompt_tokens=sum(c.usage.prompt_tokens for c in completions.values() if c.usage),
        output_tokens=sum(len(c.token_ids) for c in completions.values()),
        seconds=seconds, cache_hit_rate=engine.scheduler.stats.cache_hit_rate)
    return [record for record in records if record is not None], summary


def completion_record(index: int, completion: Completion) -> dict:
    return {"index": index, "output_ids": completion.token_ids, "text": completion.text,
            "finish_reason": completion.finish.to_dict() if completion.finish else None,
            "usage": completion.usage.to_dict() if completion.usage else None}


def error_record(index: int, error: InvalidRequestError) -> dict:
    return {"index": index, "error": {"message": str(error), "field": error.field,
                                      "type": openai_type(error), "code": http_status(error)}}
