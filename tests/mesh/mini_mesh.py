"""An in-test scheduler + detokenizer gRPC server for front-door tests.

It serves the internal `Scheduler` and `Detokenizer` services on one port with the real
`Scheduler`, a real worker (NullWorker or ModelRunner) and the real `Detokenizer`, stepping
them in one asyncio task. It is a small stand-in for the real services (which run as their
own processes in the end-to-end tests), written so the front door can be tested alone.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.worker.base import ModelWorker
from radixmesh.shared import wire
from radixmesh.shared.errors import InvalidRequestError
from radixmesh.shared.protos_gen import common_pb2, generate_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import FinishKind, FinishReason, TokenDelta


class MiniMesh(internal_pb2_grpc.SchedulerServicer, internal_pb2_grpc.DetokenizerServicer):
    def __init__(self, worker: ModelWorker, detokenizer: Detokenizer) -> None:
        self.worker = worker
        self.scheduler = Scheduler(SchedulerConfig(), worker.info())
        self.detokenizer = detokenizer
        self.batches_received: list[internal_pb2.RequestBatch] = []
        self._subscribers: list[asyncio.Queue] = []
        self._wake = asyncio.Event()
        self._server: grpc.aio.Server | None = None
        self._loop_task: asyncio.Task | None = None
        self.port = 0

    async def start(self, port: int = 0) -> str:
        self._server = grpc.aio.server()
        internal_pb2_grpc.add_SchedulerServicer_to_server(self, self._server)
        internal_pb2_grpc.add_DetokenizerServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        await self._server.start()
        self._loop_task = asyncio.create_task(self._step_loop())
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._server is not None:
            await self._server.stop(grace=None)

    # ---- Scheduler service -------------------------------------------------------------------

    async def Submit(self, request_iterator, context):
        async for batch in request_iterator:
            self.batches_received.append(batch)
            for message in batch.requests:
                self._add(wire.tokenized_request_from_proto(message))
            for rid in batch.aborts:
                delta = self.scheduler.abort(rid)
                if delta is not None:
                    self._deliver([delta])
            self._wake.set()
        return common_pb2.Empty()

    async def GetInfo(self, request, context):
        info = self.worker.info()
        return generate_pb2.ModelInfo(
            model_id=info.model_id, context_len=info.context_len, vocab_size=info.vocab_size,
            eos_token_ids=list(info.eos_token_ids), max_total_tokens=info.max_total_tokens,
            page_size=info.page_size, worker=self.worker.name)

    async def GetLoad(self, request, context):
        return internal_pb2.SchedulerLoad(num_running_reqs=len(self.scheduler.running),
                                          num_queue_reqs=len(self.scheduler.waiting))

    # ---- Detokenizer service -----------------------------------------------------------------

    async def Subscribe(self, request, context):
        queue: asyncio.Queue = asyncio.Queue()
        self._subscribers.append(queue)
        await context.send_initial_metadata(())  # tells the subscriber it is registered
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.remove(queue)

    # ---- stepping ------------------------------------------------------------------------------

    def _add(self, request) -> None:
        try:
            self.scheduler.add_request(request)
        except InvalidRequestError as exc:  # the front door should have caught it
            finish = FinishReason(FinishKind.ABORT, message=str(exc))
            self._broadcast([internal_pb2.TextDelta(rid=request.rid,
                                                    finish=wire.finish_to_proto(finish))])
            return
        self.detokenizer.add_request(request.rid, request.sampling.stop, request.input_ids)

    async def _step_loop(self) -> None:
        while True:
            if not self.scheduler.has_work:
                self._wake.clear()
                await self._wake.wait()
            plan = self.scheduler.schedule()
            if plan is None:
                await asyncio.sleep(0)
                continue
            result = await asyncio.to_thread(self.worker.execute, plan)
            self._deliver(self.scheduler.process_result(result))

    def _deliver(self, token_deltas: list[TokenDelta]) -> None:
        text_deltas = self.detokenizer.feed(token_deltas)
        for delta in token_deltas:
            if delta.finish is not None:
                self.detokenizer.release(delta.rid)
        for delta in text_deltas:
            if delta.finish is not None:
                self.detokenizer.release(delta.rid)
        if text_deltas:
            self._broadcast([wire.text_delta_to_proto(delta) for delta in text_deltas])

    def _broadcast(self, deltas: list[internal_pb2.TextDelta]) -> None:
        batch = internal_pb2.TextBatch(deltas=deltas)
        for queue in self._subscribers:
            queue.put_nowait(batch)
