"""The detokenizer's `detokenize` span: one per sampled request, from its first delta to its
finish, child of the request's context, with its output tokens and the batches it took."""

from __future__ import annotations

from pathlib import Path

import pytest

from radixmesh.make_model.tokenizer import train_tokenizer
from radixmesh.services.detokenizer import batch_detokenizer
from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.shared.requests import FinishKind, FinishReason, TokenDelta, Usage
from radixmesh.shared.span_recorder import DISABLED
from radixmesh.shared.token_batch import DetokenizeRegistration, TokenBatch
from radixmesh.shared.tokenizer import TextTokenizer
from radixmesh.shared.trace_context import TraceContext
from tests.tracing.conftest import MemorySpans

LENGTH = FinishReason(FinishKind.LENGTH)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    model_dir: Path = tmp_path_factory.mktemp("detok_tokenizer")
    train_tokenizer(model_dir, vocab_size=512)
    return TextTokenizer.from_pretrained(model_dir)


def rounds(traced: TraceContext, untraced: TraceContext) -> list[TokenBatch]:
    """Both requests get deltas over three batches; `traced` finishes in the third."""
    return [
        TokenBatch(registrations=[DetokenizeRegistration("t", (), (5,), 3, traced),
                                  DetokenizeRegistration("u", (), (5,), 3, untraced)],
                   deltas=[TokenDelta("t", [40, 41]), TokenDelta("u", [40])]),
        TokenBatch(deltas=[TokenDelta("u", [42])]),
        TokenBatch(deltas=[TokenDelta("t", [43]), TokenDelta("u", [44])]),
        TokenBatch(deltas=[TokenDelta("t", [45], LENGTH, Usage(3, 4, 0)),
                           TokenDelta("u", [46], LENGTH, Usage(3, 4, 0))]),
    ]


def test_a_sampled_request_gets_one_detokenize_span(memory_spans: MemorySpans,
                                                    sampled_trace: TraceContext,
                                                    unsampled_trace: TraceContext):
    core = BatchDetokenizer(None, memory_spans.recorder)
    for batch in rounds(sampled_trace, unsampled_trace):
        core.round(batch)
    [span] = memory_spans.finished()
    assert span.name == "detokenize"
    assert f"{span.context.trace_id:032x}" == sampled_trace.trace_id
    assert f"{span.parent.span_id:016x}" == sampled_trace.traceparent[36:52]
    assert span.attributes["gen_ai.usage.output_tokens"] == 4
    assert span.attributes["radixmesh.detokenize.batches"] == 3
    assert span.attributes["gen_ai.response.finish_reasons"] == ("length",)
    assert span.start_time <= span.end_time
    assert len(core) == 0


def test_a_stop_string_ends_the_span_where_it_matched(memory_spans: MemorySpans,
                                                      tokenizer: TextTokenizer,
                                                      sampled_trace: TraceContext):
    core = BatchDetokenizer(tokenizer, memory_spans.recorder)
    core.register("s", ["\n\n"], [], 2, sampled_trace)
    first, second = tokenizer.encode("Answer:")[1:], tokenizer.encode(" 42\n\nmore")[1:]
    core.process([TokenDelta("s", first)], {})
    [stopped] = core.process([TokenDelta("s", second)], {})
    assert stopped.finish.kind is FinishKind.STOP
    core.process([TokenDelta("s", [7], FinishReason(FinishKind.ABORT))], {})  # too late
    [span] = memory_spans.named("detokenize")
    assert span.attributes["gen_ai.usage.output_tokens"] == len(first) + len(second)
    assert span.attributes["radixmesh.detokenize.batches"] == 2
    assert span.attributes["gen_ai.response.finish_reasons"] == ("stop",)


def test_nothing_is_recorded_or_timed_while_tracing_is_off(sampled_trace: TraceContext,
                                                           unsampled_trace: TraceContext,
                                                           monkeypatch: pytest.MonkeyPatch):
    def no_clock() -> int:
        raise AssertionError("the clock was read while tracing is off")

    monkeypatch.setattr(batch_detokenizer, "now_ns", no_clock)
    core = BatchDetokenizer(None, DISABLED)
    texts = [text for batch in rounds(sampled_trace, unsampled_trace)
             for text in core.round(batch)]
    assert sum(text.finish is not None for text in texts) == 2
