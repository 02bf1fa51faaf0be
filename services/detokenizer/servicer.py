"""The Detokenizer gRPC service: token batches from the scheduler in, one TextBatch per round
out to every subscribed tokenizer. A thin layer over BatchDetokenizer.

The scheduler's Tokens stream carries every request, so nothing in one batch may end it: the
core refuses bad registrations and undecodable tokens request by request, and should it still
raise, the batch's requests are ended with an abort here and the stream goes on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.shared import wire
from radixmesh.shared.mesh_protocol import STREAM_ACK, Hello, unavailable_finish
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import FinishKind, FinishReason, TextDelta, TokenDelta
from radixmesh.shared.token_batch import TokenBatch

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
    """Streams open with the handshake (`shared/mesh_protocol.py`). A Tokens stream that
    ends, however it ends, finishes the requests it registered and left unfinished with
    UNAVAILABLE: their scheduler is gone or gave up on this stream, and a front door must not
    wait for them."""

    def __init__(self, core: BatchDetokenizer, broadcaster: Broadcaster) -> None:
        self._core = core
        self._broadcaster = broadcaster
        self.hello = Hello("detokenizer", implementation="detokenizer",
                           capabilities=(STREAM_ACK,))

    async def Hello(self, request: internal_pb2.PeerHello,
                    context: grpc.aio.ServicerContext) -> internal_pb2.PeerHello:
        return internal_pb2.PeerHello(**self.hello.fields())

    async def Tokens(self, request_iterator: AsyncIterator[internal_pb2.TokenBatch],
                     context: grpc.aio.ServicerContext) -> common_pb2.Empty:
        await self._accept(context)
        live: set[str] = set()  # rids this stream registered and did not finish
        try:
            async for batch in request_iterator:
                text = self._round(batch, live)
                if text.rids:
                    self._broadcaster.publish(text)
            logger.info("the scheduler closed its Tokens stream")
        finally:
            self._end_stream(live)
        return common_pb2.Empty()

    async def Subscribe(self, request: common_pb2.Empty,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[internal_pb2.TextBatch]:
        """Sends initial metadata once subscribed: from then on the subscriber misses no
        batch, so a tokenizer waits for it before submitting requests."""
        queue = self._broadcaster.subscribe()
        try:
            await self._accept(context)
            while (batch := await queue.get()) is not None:
                yield batch
        finally:
            self._broadcaster.unsubscribe(queue)

    async def _accept(self, context: grpc.aio.ServicerContext) -> None:
        """Refuses a stream meant for another instance or protocol; else acknowledges it."""
        refusal = self.hello.refusal(dict(context.invocation_metadata() or ()))
        if refusal is not None:
            logger.warning("refused a stream: %s", refusal)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        await context.send_initial_metadata(())

    def _round(self, batch: internal_pb2.TokenBatch, live: set[str]) -> internal_pb2.TextBatch:
        try:
            tokens = wire.token_batch_from_proto(batch)
        except ValueError as error:  # columns that disagree: every request named ends
            logger.error("a malformed token batch: %s", error)
            rids = dict.fromkeys([*(new.rid for new in batch.new_requests), *batch.rids])
            live.difference_update(rids)
            named = TokenBatch(deltas=[TokenDelta(rid, []) for rid in rids])
            return wire.text_batch_to_proto(_aborted(named, f"malformed token batch: {error}"))
        live.update(registration.rid for registration in tokens.registrations)
        try:
            texts = self._core.round(tokens)
        except Exception as error:  # the last line: a bug here must not end the stream
            logger.exception("a detokenizer round failed; its requests end with an abort")
            texts = _aborted(tokens, f"detokenizer error: {error!r}")
        live.difference_update(delta.rid for delta in tokens.deltas if delta.finish is not None)
        live.difference_update(text.rid for text in texts if text.finish is not None)
        return wire.text_batch_to_proto(texts)

    def _end_stream(self, live: set[str]) -> None:
        if not live:
            return
        logger.warning("the Tokens stream ended with %d requests unfinished: they fail with "
                       "UNAVAILABLE", len(live))
        finish = unavailable_finish("the scheduler's token stream ended")
        try:  # through the core, which releases them and fills their usage
            texts = self._core.process([TokenDelta(rid, [], finish) for rid in sorted(live)], {})
        except Exception:
            logger.exception("could not end the requests of a closed Tokens stream")
            texts = [TextDelta(rid, "", [], finish) for rid in sorted(live)]
        if texts:
            self._broadcaster.publish(wire.text_batch_to_proto(texts))


def _aborted(tokens: TokenBatch, reason: str) -> list[TextDelta]:
    """A finishing abort for every request `tokens` names, so that none waits forever."""
    rids = dict.fromkeys([reg.rid for reg in tokens.registrations]
                         + [delta.rid for delta in tokens.deltas])
    finish = FinishReason(FinishKind.ABORT, message=reason, status_code=500)  # a fault of ours
    return [TextDelta(rid, "", [], finish) for rid in rids]
