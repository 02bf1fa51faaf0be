"""The Scheduler gRPC service: a thin layer over the SchedulerLoop.

It converts messages: request batches from the tokenizers go into the loop; model info and
load come from the scheduler's state. It also guards the Submit stream's entry: each request
is checked on its own (`shared/request_checks.py`), and one that fails is finished at once
with the reason while the rest of its batch, and the stream, go on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from radixmesh.services.scheduler.cache_flush import flush_cache
from radixmesh.services.scheduler.loop import SchedulerLoop
from radixmesh.services.scheduler.stats import scheduler_load
from radixmesh.shared import wire
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.request_checks import check_tokenized_request
from radixmesh.shared.requests import TokenizedRequest
from radixmesh.shared.text_checks import check_rid

logger = logging.getLogger(__name__)


class SchedulerServicer(internal_pb2_grpc.SchedulerServicer):
    def __init__(self, loop: SchedulerLoop, model_info: ModelInfo) -> None:
        self._loop = loop
        self._info = model_info
        self._model_info = wire.model_info_to_proto(model_info)

    async def Submit(self, request_iterator: AsyncIterator[internal_pb2.RequestBatch],
                     context: grpc.aio.ServicerContext) -> common_pb2.Empty:
        """One long-lived stream per tokenizer. When it closes, that tokenizer's unfinished
        requests are aborted: nobody is left to read their output."""
        owner = object()
        try:
            async for batch in request_iterator:
                self._submit(batch, owner)
        finally:
            self._loop.abort_owned_by(owner)
        return common_pb2.Empty()

    async def GetInfo(self, request: common_pb2.Empty,
                      context: grpc.aio.ServicerContext) -> generate_pb2.ModelInfo:
        return self._model_info

    async def GetLoad(self, request: common_pb2.Empty,
                      context: grpc.aio.ServicerContext) -> internal_pb2.SchedulerLoad:
        return wire.scheduler_load_to_proto(scheduler_load(self._loop.scheduler))

    async def FlushCache(self, request: common_pb2.Empty,
                         context: grpc.aio.ServicerContext) -> internal_pb2.FlushCacheReply:
        outcome = flush_cache(self._loop.scheduler, self._loop.num_inflight)
        return internal_pb2.FlushCacheReply(flushed=outcome.flushed, message=outcome.message,
                                            freed_pages=outcome.freed_pages)

    def _submit(self, batch: internal_pb2.RequestBatch, owner: object) -> None:
        requests: list[TokenizedRequest] = []
        for message in batch.requests:
            request = self._admit(message)
            if request is not None:
                requests.append(request)
        self._loop.submit(requests, list(batch.aborts), owner)

    @property
    def model_info(self) -> ModelInfo:
        """The model the entry checks hold requests to (context, vocabulary, KV pool). A
        subclass that follows worker swaps returns the current worker's."""
        return self._info

    def _admit(self, message: internal_pb2.TokenizedRequest) -> TokenizedRequest | None:
        """The request if it passes the entry checks; otherwise None, and it is finished at
        once with the reason (the front door answers INVALID_ARGUMENT / 400)."""
        info = self.model_info
        try:
            request = wire.tokenized_request_from_proto(message)
            check_tokenized_request(request, info)
            return request
        except Exception as error:  # the tokenizer validates; this is the last line
            reason = str(error) if isinstance(error, InvalidRequestError) else f"bad request: {error}"
            logger.warning("refused request %r at the scheduler's entry: %s", message.rid[:64], reason)
        try:
            check_rid(message.rid)
        except InvalidRequestError:
            return None  # no id the sender could recognise: nobody to tell
        # The prompt goes to the detokenizer as context only while its ids are in the vocabulary.
        ids = message.input_ids
        in_vocab = bool(ids) and 0 <= min(ids) and max(ids) < info.vocab_size
        self._loop.reject(message.rid, ids if in_vocab else (), reason)
        return None

