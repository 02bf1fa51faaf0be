"""The Detokenizer gRPC service: token batches from the scheduler in, one TextBatch per round
out to every subscribed tokenizer. A thin layer over BatchDetokenizer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc

logger = logging.getLogger(__name__)


class Broadcaster:
    """Fans each TextBatch out to every subscriber's queue. Queues are unbounded: a slow
    tokenizer must not stall the scheduler's stream, and each batch is small."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[internal_pb2.TextBatch | None]] = set()

    @property
    def num_subscribers(self) -> int:
        return len(self._queues)

    def publish(self, batch: internal_pb2.TextBatch) -> None:
        for queue in self._queues:
            queue.put_nowait(batch)

    def subscribe(self) -> asyncio.Queue[internal_pb2.TextBatch | None]:
        """A queue that receives every batch published from now on; None marks the end."""
        queue: asyncio.Queue[internal_pb2.TextBatch | None] = asyncio.Queue()
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[internal_pb2.TextBatch | None]) -> None:
        self._queues.discard(queue)

    def close(self) -> None:
        """Ends every subscription."""
        for queue in self._queues:
            queue.put_nowait(None)


class DetokenizerServicer(internal_pb2_grpc.DetokenizerServicer):
    def __init__(self, core: BatchDetokenizer, broadcaster: Broadcaster) -> None:
        self._core = core
        self._broadcaster = broadcaster

    async def Tokens(self, request_iterator: AsyncIterator[internal_pb2.TokenBatch],
                     context: grpc.aio.ServicerContext) -> common_pb2.Empty:
        async for batch in request_iterator:
            text = self._round(batch)
            if text.deltas:
                self._broadcaster.publish(text)
        logger.info("the scheduler closed its Tokens stream")
        return common_pb2.Empty()

    async def Subscribe(self, request: common_pb2.Empty,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[internal_pb2.TextBatch]:
        """Sends initial metadata once subscribed: from then on the subscriber misses no
        batch, so a tokenizer waits for it before submitting requests."""
        queue = self._broadcaster.subscribe()
        try:
            await context.send_initial_metadata(())
            while (batch := await queue.get()) is not None:
                yield batch
        finally:
            self._broadcaster.unsubscribe(queue)

    def _round(self, batch: internal_pb2.TokenBatch) -> internal_pb2.TextBatch:
        texts = self._core.round(wire.token_batch_from_proto(batch))
        return internal_pb2.TextBatch(deltas=[wire.text_delta_to_proto(text) for text in texts])
