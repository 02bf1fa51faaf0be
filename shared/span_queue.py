"""The export queue behind every service's spans: the SDK's batch processor, bounded, counting
what it drops. Imported only when tracing is on (it pulls in the OpenTelemetry SDK)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

MAX_QUEUED_SPANS = 4096
EXPORT_BATCH = 512
EXPORT_DELAY_MS = 500
EXPORT_TIMEOUT_MS = 5000


class CountingSpanQueue(SpanProcessor):
    """The SDK's batch processor, counting the spans it drops because its queue is full.

    The batch queue drops silently; `pending` (ended, not yet handed to the exporter) tells
    when the next span will push one out. Approximate under races, which a counter tolerates.
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self._lock = threading.Lock()
        self._pending = 0
        self.dropped = 0
        self._processor = BatchSpanProcessor(
            _CountedExports(exporter, self), max_queue_size=MAX_QUEUED_SPANS,
            schedule_delay_millis=EXPORT_DELAY_MS, max_export_batch_size=EXPORT_BATCH,
            export_timeout_millis=EXPORT_TIMEOUT_MS)

    def on_start(self, span, parent_context=None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            if self._pending >= MAX_QUEUED_SPANS:
                self.dropped += 1
            else:
                self._pending += 1
        self._processor.on_end(span)

    def exported(self, count: int) -> None:
        with self._lock:
            self._pending = max(0, self._pending - count)

    def shutdown(self) -> None:
        self._processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._processor.force_flush(timeout_millis)


class _CountedExports(SpanExporter):
    """The exporter, telling the queue how many spans left it."""

    def __init__(self, exporter: SpanExporter, queue: CountingSpanQueue) -> None:
        self._exporter = exporter
        self._queue = queue

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._queue.exported(len(spans))
        return self._exporter.export(spans)

    def shutdown(self, timeout_millis: float = 30000, **kwargs) -> None:
        self._exporter.shutdown(timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)
