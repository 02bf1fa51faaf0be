"""Runs a workload against a running mesh through the public gRPC API.

One task per request: it sleeps until the request's arrival time, waits for a concurrency
slot if `max_concurrency` is set, then streams the request and stamps every chunk as it
arrives. A request that fails for any reason is recorded as a failure; the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from tqdm import tqdm

from radixmesh.bench.trace import RequestTrace
from radixmesh.bench.workloads import Workload, request_body
from radixmesh.client import AsyncClient, RadixMeshClientError


def describe_error(error: BaseException) -> str:
    if isinstance(error, RadixMeshClientError):
        return str(error)  # already "STATUS_CODE: message"
    return f"{type(error).__name__}: {error}"


async def stream_one(client: AsyncClient, body: dict, trace: RequestTrace,
                     output_ids: list[int] | None = None) -> None:
    """Sends one request and records its chunks; leaves `trace` ended or failed, never open.
    `output_ids`, if given, collects the generated ids (multiturn feeds them back)."""
    trace.send_time = time.perf_counter()
    try:
        async for chunk in client.generate(**body):
            now = time.perf_counter()
            trace.on_chunk(now, len(chunk.token_ids))
            if output_ids is not None:
                output_ids.extend(chunk.token_ids)
            if chunk.finish is not None:
                trace.on_end(now, chunk.usage, chunk.finish)
    except Exception as error:  # one request's failure is a figure, not a crash
        trace.on_error(time.perf_counter(), describe_error(error))
        return
    if trace.end_time is None:
        trace.on_error(time.perf_counter(), "the stream closed without a finish message")


async def run_on_mesh(client: AsyncClient, workload: Workload, sampling: dict,
                      max_concurrency: int | None = None, progress: bool = True,
                      traceparents: Sequence[str] | None = None) -> list[RequestTrace]:
    """Runs every request of `workload` to its end; one trace per request, in workload order.
    `traceparents`, one per request, go out as each request's W3C trace context."""
    traces = [RequestTrace(len(request.input_ids)) for request in workload.requests]
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    start = time.perf_counter()

    with tqdm(total=len(traces), disable=not progress, unit="req",
              desc=f"{workload.name} (mesh)") as bar:
        async def send(index: int) -> None:
            request = workload.requests[index]
            await asyncio.sleep(max(0.0, start + request.arrival_s - time.perf_counter()))
            body = request_body(request, sampling)
            if traceparents is not None:
                body["traceparent"] = traceparents[index]
            async with slots if slots is not None else contextlib.nullcontext():
                await stream_one(client, body, traces[index])
            bar.update(1)

        await asyncio.gather(*(send(index) for index in range(len(traces))))
    return traces
