"""The Scheduler gRPC service: a thin layer over the SchedulerLoop.

It only converts messages: request batches from the tokenizers go into the loop; model info
and load come from the scheduler's state.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc

from radixmesh.services.scheduler.loop import SchedulerLoop
from radixmesh.services.scheduler.stats import scheduler_load
from radixmesh.shared import wire
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import TokenizedRequest

logger = logging.getLogger(__name__)


class SchedulerServicer(internal_pb2_grpc.SchedulerServicer):
    def __init__(self, loop: SchedulerLoop, model_info: ModelInfo) -> None:
        self._loop = loop
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

    def _submit(self, batch: internal_pb2.RequestBatch, owner: object) -> None:
        requests: list[TokenizedRequest] = []
        for message in batch.requests:
            try:
                requests.append(wire.tokenized_request_from_proto(message))
            except Exception as error:  # the tokenizer validates; this is the last line
                logger.warning("undecodable request %s: %s", message.rid, error)
                self._loop.reject(message.rid, message.input_ids, str(error))
        self._loop.submit(requests, list(batch.aborts), owner)

