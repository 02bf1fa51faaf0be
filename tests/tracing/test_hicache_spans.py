"""`hicache.prefetch` end to end: the scheduler's link prefetches a sampled request's pages
from L3 through the real hicache service (its gRPC server in process, exporting over OTLP to
a real receiver); the service's `hicache.lookup` / `hicache.prefetch` are children of the
scheduler's span, named by the traceparent the calls carry as metadata."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc

from radixmesh.bench.span_receiver import ReceivedSpan, SpanReceiver
from radixmesh.services.hicache import server as hicache_server
from radixmesh.services.hicache.config import HiCacheConfig
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.hicache_link import HiCacheLink
from radixmesh.services.scheduler.host_cache import build_host_cache
from radixmesh.services.scheduler.page_allocator import PageAllocator
from radixmesh.services.scheduler.request import Prefetch, SchedReq
from radixmesh.services.scheduler.stats import SchedulerStats
from radixmesh.shared.grpc_service import wait_until_serving
from radixmesh.shared.page_keys import page_keys
from radixmesh.shared.protos_gen import hicache_pb2, hicache_pb2_grpc
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.step import WorkerInfo
from radixmesh.shared.trace_context import TraceContext
from tests.mesh.conftest import free_port
from tests.tracing.conftest import MemorySpans

PAGE = 2
INFO = WorkerInfo(model_id="tiny", num_pages=16, page_size=PAGE, context_len=256,
                  vocab_size=512, eos_token_ids=(2,), kv_dtype="float32",
                  max_running_requests=4, num_layers=1, num_kv_heads=1, head_dim=8,
                  weights_fingerprint="ab12")
PROMPT = tuple(range(40, 52))  # 6 pages: 5 complete before the last token, which is computed


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_a_prefetch_from_l3_is_one_trace_across_scheduler_and_hicache(
        memory_spans: MemorySpans, span_receiver: SpanReceiver, sampled_trace: TraceContext,
        unsampled_trace: TraceContext, tmp_path: Path):
    config = HiCacheConfig(port=free_port(), hicache_storage_backend="file",
                           hicache_storage_dir=str(tmp_path / "l3"), hicache_storage_size=0.01,
                           enable_trace=True, otlp_traces_endpoint=span_receiver.address)
    host_cache = build_host_cache(SchedulerConfig(enable_hierarchical_cache=True,
                                                  hicache_address=f"127.0.0.1:{config.port}",
                                                  hicache_prefetch_threshold=PAGE),
                                  INFO, PageAllocator(INFO.num_pages))
    keys = page_keys(host_cache.key_root, PROMPT[:-2], PAGE)
    waiting: list[SchedReq] = []

    async def scenario() -> None:
        service = asyncio.create_task(hicache_server.serve(config))
        link = HiCacheLink(f"127.0.0.1:{config.port}", host_cache, INFO, SchedulerStats(40),
                           lambda: waiting, memory_spans.recorder)
        link_task = asyncio.create_task(link.run())
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{config.port}") as channel:
                await wait_until_serving(channel, 30.0)
                await until(lambda: host_cache.pending_spec is not None)
                host_cache.take_attachment()  # as the scheduler's next plan would
                # L3 gets the prompt's pages (their bytes do not matter here).
                stub = hicache_pb2_grpc.HiCacheStub(channel)
                await stub.Store(hicache_pb2.PageTransfer(epoch=host_cache.epoch, keys=keys,
                                                          slots=list(range(1, len(keys) + 1))))
            for rid, trace in (("traced", sampled_trace), ("untraced", unsampled_trace)):
                req = SchedReq(rid, PROMPT, SamplingParams(), arrival=1, trace=trace)
                waiting[:] = [req]
                link.kick()
                await until(lambda req=req: req.prefetch is Prefetch.DONE
                            and not host_cache.jobs)
                # The second prompt is cached now: drop the tree's pages so it asks L3 too.
                host_cache.cache.reset()
        finally:
            link_task.cancel()
            service.cancel()
            await asyncio.gather(link_task, service, return_exceptions=True)

    asyncio.run(scenario())  # the service's way out flushes its spans
    [prefetch] = memory_spans.named("hicache.prefetch")
    assert f"{prefetch.parent.span_id:016x}" == sampled_trace.traceparent[36:52]
    assert prefetch.attributes["radixmesh.hicache.storage_pages"] == len(keys)
    assert prefetch.attributes["radixmesh.hicache.prefetched_tokens"] == len(keys) * PAGE
    assert len(memory_spans.finished()) == 1  # none for the unsampled request

    served: list[ReceivedSpan] = span_receiver.wait_for(lambda spans: len(spans) >= 2)
    assert sorted(span.name for span in served) == ["hicache.lookup", "hicache.prefetch"]
    for span in served:
        assert span.service == "radixmesh-hicache"
        assert span.trace_id == sampled_trace.trace_id
        assert span.parent_span_id == f"{prefetch.context.span_id:016x}"
        assert prefetch.start_time <= span.start_ns <= span.end_ns <= prefetch.end_time
    [remote] = [span for span in served if span.name == "hicache.prefetch"]
    assert remote.attributes["radixmesh.hicache.prefetched_pages"] == len(keys)
