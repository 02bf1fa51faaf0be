"""The scheduler's spans (`queue`, `prefill` per chunk, `decode`, `hicache.load`), made by the
real SchedulerLoop and Scheduler over a NullWorker, into the real SDK in memory."""

from __future__ import annotations

import dataclasses

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

from radixmesh.services.scheduler import request_spans
from radixmesh.services.scheduler.host_cache import HostPoolSpec
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.sampling_params import SamplingParams
from radixmesh.shared.span_recorder import DISABLED
from radixmesh.shared.trace_context import TraceContext
from tests.tracing.conftest import MemorySpans
from tests.tracing.scheduler_driver import INFO, LoopDriver, request

CHUNK = 8


def assert_child_of(span: ReadableSpan, trace: TraceContext) -> None:
    assert f"{span.context.trace_id:032x}" == trace.trace_id
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == trace.traceparent[36:52]
    assert span.start_time <= span.end_time


def by_start(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return sorted(spans, key=lambda span: span.start_time)


def test_a_chunked_prompt_gives_queue_then_a_prefill_per_chunk_then_one_decode(
        memory_spans: MemorySpans, sampled_trace: TraceContext, unsampled_trace: TraceContext):
    driver = LoopDriver(memory_spans.recorder, chunked_prefill_size=CHUNK)
    driver.loop.submit([request("traced", 30, 5, sampled_trace),
                        request("untraced", 20, 4, unsampled_trace)])
    driver.run_idle()
    assert set(driver.finishes) == {"traced", "untraced"}

    names = sorted(span.name for span in memory_spans.finished())
    assert names == ["decode", "prefill", "prefill", "prefill", "prefill", "queue"]
    for span in memory_spans.finished():
        assert_child_of(span, sampled_trace)
    [queue], [decode] = memory_spans.named("queue"), memory_spans.named("decode")
    prefills = by_start(memory_spans.named("prefill"))
    chunks = [span.attributes["radixmesh.prefill.computed_tokens"] for span in prefills]
    assert chunks == [8, 8, 8, 6]
    assert [span.attributes["radixmesh.prefill.chunk_index"] for span in prefills] == [0, 1, 2, 3]
    assert [span.attributes["radixmesh.prefill.last_chunk"] for span in prefills] == \
        [False, False, False, True]
    first = prefills[0].attributes
    assert first["radixmesh.prefill.cached_tokens"] == 0
    assert (first["radixmesh.cached_tokens.device"], first["radixmesh.cached_tokens.host"],
            first["radixmesh.cached_tokens.storage"]) == (0, 0, 0)
    assert all("radixmesh.prefill.cached_tokens" not in span.attributes for span in prefills[1:])
    assert queue.end_time <= prefills[0].start_time
    assert prefills[-1].end_time <= decode.start_time
    assert decode.attributes["gen_ai.usage.output_tokens"] == 5
    assert decode.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert decode.status.status_code is StatusCode.UNSET
    assert not driver.loop.spans._live  # finished requests are forgotten


def test_cached_tokens_are_reported_on_the_first_chunk(memory_spans: MemorySpans,
                                                       sampled_trace: TraceContext):
    driver = LoopDriver(memory_spans.recorder)
    driver.loop.submit([request("first", 24, 1, seed_text="shared")])
    driver.run_idle()
    driver.loop.submit([request("again", 24, 1, sampled_trace, seed_text="shared")])
    driver.run_idle()
    [prefill] = memory_spans.named("prefill")
    # The last prompt token is always recomputed for its logits.
    assert prefill.attributes["radixmesh.prefill.cached_tokens"] == 23
    assert prefill.attributes["radixmesh.cached_tokens.device"] == 23
    assert prefill.attributes["radixmesh.prefill.computed_tokens"] == 1


def test_nothing_is_recorded_or_timed_while_tracing_is_off_or_unsampled(
        memory_spans: MemorySpans, sampled_trace: TraceContext, unsampled_trace: TraceContext,
        monkeypatch: pytest.MonkeyPatch):
    def no_clock() -> int:
        raise AssertionError("the clock was read for a request that is not traced")

    monkeypatch.setattr(request_spans, "now_ns", no_clock)
    for recorder, trace in [(DISABLED, sampled_trace), (memory_spans.recorder, unsampled_trace)]:
        driver = LoopDriver(recorder, chunked_prefill_size=CHUNK)
        refused = TokenizedRequest("refused", (), SamplingParams(), trace)
        driver.loop.submit([request("a", 30, 5, trace), request("b", 3, 2, trace), refused])
        driver.loop.submit([], aborts=["b"])
        driver.run_idle()
        assert set(driver.finishes) == {"a", "b", "refused"}
        assert not driver.loop.spans._live and not driver.loop.spans._sent
    assert memory_spans.finished() == []


def test_an_aborted_request_has_an_error_status(memory_spans: MemorySpans,
                                                sampled_trace: TraceContext):
    driver = LoopDriver(memory_spans.recorder)
    driver.loop.submit([request("long", 6, 500, sampled_trace)])
    driver.run_until(lambda: len(driver.outputs.get("long", [])) >= 3)
    driver.loop.abort("long")
    driver.run_idle()
    [decode] = memory_spans.named("decode")
    assert decode.status.status_code is StatusCode.ERROR
    assert decode.attributes["gen_ai.response.finish_reasons"] == ("abort",)
    assert 3 <= decode.attributes["gen_ai.usage.output_tokens"] < 500
    assert [span.status.status_code for span in memory_spans.named("prefill")] == \
        [StatusCode.UNSET]


def test_a_request_aborted_or_refused_in_the_queue_ends_its_queue_span_with_an_error(
        memory_spans: MemorySpans, sampled_trace: TraceContext):
    driver = LoopDriver(memory_spans.recorder, max_running_requests=1)
    driver.loop.submit([request("running", 4, 50), request("waiting", 4, 5, sampled_trace),
                        request("too-long", 10, INFO.num_pages, sampled_trace)])
    driver.turn()
    driver.loop.abort("waiting")
    driver.run_idle()
    queues = memory_spans.named("queue")
    assert len(queues) == 2 and not memory_spans.named("decode")
    assert all(span.status.status_code is StatusCode.ERROR for span in queues)
    assert any("max_new_tokens" in (span.status.description or "") for span in queues)


def test_pages_loaded_from_host_memory_give_a_load_span(memory_spans: MemorySpans,
                                                        sampled_trace: TraceContext):
    info = dataclasses.replace(INFO, num_pages=64, kv_dtype="float32")
    driver = LoopDriver(memory_spans.recorder, info, enable_hierarchical_cache=True)
    driver.scheduler.host_cache.attach(HostPoolSpec("pool", 256, "epoch", False))
    driver.loop.submit([request("first", 40, 1, seed_text="shared")])
    driver.run_idle()
    driver.loop.submit([request("evicts", 50, 1)])  # pushes the first prompt off the device
    driver.run_idle()
    driver.loop.submit([request("again", 40, 2, sampled_trace, seed_text="shared")])
    driver.run_idle()
    [load] = memory_spans.named("hicache.load")
    [prefill] = memory_spans.named("prefill")
    assert_child_of(load, sampled_trace)
    assert load.attributes["radixmesh.hicache.loaded_tokens"] > 0
    assert prefill.attributes["radixmesh.cached_tokens.host"] == \
        load.attributes["radixmesh.hicache.loaded_tokens"]
    assert (load.start_time, load.end_time) == (prefill.start_time, prefill.end_time)


def test_a_retracted_request_queues_again_and_keeps_one_decode(memory_spans: MemorySpans,
                                                               sampled_trace: TraceContext):
    info = dataclasses.replace(INFO, num_pages=40)
    driver = LoopDriver(memory_spans.recorder, info)
    traces = {f"r{i}": of_span(sampled_trace, i + 1) for i in range(6)}
    for rid, trace in traces.items():  # the pool cannot hold them all to the end
        driver.loop.submit([request(rid, 6, 24, trace)])
    driver.run_idle()
    assert driver.scheduler.stats.num_retractions > 0 and len(driver.finishes) == 6
    for rid, trace in traces.items():
        spans = [span for span in memory_spans.finished()
                 if f"{span.parent.span_id:016x}" == trace.traceparent[36:52]]
        admissions = sum(new.rid == rid for plan in driver.plans for new in plan.new_requests)
        queues = by_start([span for span in spans if span.name == "queue"])
        assert [span.attributes["radixmesh.queue.retracted"] for span in queues] == \
            [False] + [True] * (admissions - 1)
        assert sum(span.name == "prefill" for span in spans) == admissions
        [decode] = [span for span in spans if span.name == "decode"]
        assert decode.attributes["gen_ai.usage.output_tokens"] == 24
    assert max(sum(new.rid == rid for plan in driver.plans for new in plan.new_requests)
               for rid in traces) > 1


def of_span(trace: TraceContext, span_id: int) -> TraceContext:
    """The context of another request of the same trace: a parent of its own."""
    return TraceContext(f"{trace.traceparent[:36]}{span_id:016x}-01")
