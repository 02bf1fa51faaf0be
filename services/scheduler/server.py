"""`radixmesh serve scheduler`: connects to its peers, then serves the Scheduler service.

Startup: wait for the worker and the detokenizer to be healthy, size the Scheduler from the
worker's info, open the one Execute stream and the one Tokens stream, start the step loop,
then report SERVING. Losing either stream ends the service with an error: the worker's state
and the detokenizer's are tied to them, and `radixmesh up` restarts nothing by itself.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.scheduler.hicache_link import HiCacheLink
from radixmesh.services.scheduler.loop import (
    PublishBatch,
    ReceiveResult,
    SchedulerLoop,
    SendPlan,
)
from radixmesh.services.scheduler.scheduler import Scheduler
from radixmesh.services.scheduler.servicer import (
    SchedulerServicer,
)
from radixmesh.shared import wire
from radixmesh.shared.grpc_service import (
    INTERNAL_OPTIONS,
    host_port,
    start_server,
    wait_until_serving,
)
from radixmesh.shared.mesh_info import ModelInfo
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.span_recorder import SpanRecorder
from radixmesh.shared.step import StepPlan, StepResult
from radixmesh.shared.token_batch import TokenBatch
from radixmesh.shared.tracing import start_tracing, stop_tracing

logger = logging.getLogger(__name__)
SERVICE_NAME = internal_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name


class PeerLostError(ConnectionError):
    """A stream the scheduler cannot work without has ended."""


async def serve(config: SchedulerConfig) -> None:
    """Serves until cancelled; raises PeerLostError if the worker or detokenizer goes away."""
    recorder = start_tracing("scheduler", config)
    try:
        await _serve(config, recorder)
    finally:
        stop_tracing(recorder)  # flushes what is queued, for SHUTDOWN_FLUSH_S at most


async def _serve(config: SchedulerConfig, recorder: SpanRecorder) -> None:
    async with grpc.aio.insecure_channel(config.worker_address, options=INTERNAL_OPTIONS) as \
            worker_channel, grpc.aio.insecure_channel(config.detokenizer_address,
                                                      options=INTERNAL_OPTIONS) as detok_channel:
        await _wait_for_peer("worker", config.worker_address, worker_channel, config.peer_timeout)
        await _wait_for_peer("detokenizer", config.detokenizer_address, detok_channel,
                             config.peer_timeout)
        worker_stub = internal_pb2_grpc.WorkerStub(worker_channel)
        worker_info = wire.worker_info_from_proto(await worker_stub.GetInfo(common_pb2.Empty()))
        scheduler = Scheduler(config, worker_info)
        execute = worker_stub.Execute()
        tokens = internal_pb2_grpc.DetokenizerStub(detok_channel).Tokens()
        link = _hicache_link(config, scheduler, recorder)
        loop = SchedulerLoop(scheduler, _plan_sender(execute), _result_receiver(execute),
                             _batch_publisher(tokens), config.max_inflight_steps,
                             on_progress=link.kick if link is not None else None,
                             recorder=recorder)
        if link is not None:
            link.wake = loop.wake
        servicer = SchedulerServicer(loop, ModelInfo.from_worker(worker_info))
        server = await start_server(
            host_port(config.host, config.port),
            lambda grpc_server: internal_pb2_grpc.add_SchedulerServicer_to_server(
                servicer, grpc_server),
            [SERVICE_NAME])
        loop_task = asyncio.create_task(loop.run(), name="scheduler-loop")
        link_task = (asyncio.create_task(link.run(), name="hicache-link")
                     if link is not None else None)
        try:
            logger.info("scheduler serving on port %d: %s worker, %d pages of %d tokens",
                        server.port, worker_info.worker, worker_info.num_pages,
                        worker_info.page_size)
            await server.set_serving()
            await _run_until_peer_lost(loop_task, execute, tokens)
        finally:
            loop_task.cancel()
            if link_task is not None:
                link_task.cancel()
            await server.stop()
            execute.cancel()
            tokens.cancel()


def _hicache_link(config: SchedulerConfig, scheduler: Scheduler,
                  recorder: SpanRecorder) -> HiCacheLink | None:
    if scheduler.host_cache is None:
        return None
    logger.info("hierarchical cache: hicache service at %s", config.hicache_address)
    return HiCacheLink(config.hicache_address, scheduler.host_cache, scheduler.worker,
                       scheduler.stats, lambda: scheduler.waiting, recorder)


async def _run_until_peer_lost(loop_task: asyncio.Task, execute: grpc.aio.Call,
                               tokens: grpc.aio.Call) -> None:
    """Waits on the loop and on both streams' ends: an idle loop would not notice a peer
    going away until the next request, and the mesh should stop at once instead."""
    streams = {asyncio.ensure_future(execute.code()): "worker Execute",
               asyncio.ensure_future(tokens.code()): "detokenizer Tokens"}
    try:
        done, _ = await asyncio.wait([loop_task, *streams], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in streams:
            watcher.cancel()
    if loop_task in done:
        loop_task.result()  # re-raises what stopped the loop
        return
    ended = next(watcher for watcher in streams if watcher in done)
    raise PeerLostError(f"the {streams[ended]} stream ended ({ended.result().name})")


async def _wait_for_peer(name: str, address: str, channel: grpc.aio.Channel,
                         timeout: float) -> None:
    logger.info("waiting for the %s at %s", name, address)
    try:
        await wait_until_serving(channel, timeout)
    except TimeoutError:
        raise PeerLostError(f"the {name} at {address} was not healthy within {timeout:.0f}s") \
            from None


def _plan_sender(execute: grpc.aio.StreamStreamCall) -> SendPlan:
    async def send(plan: StepPlan) -> None:
        try:
            await execute.write(wire.plan_to_proto(plan))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
            raise PeerLostError(f"worker Execute stream failed: {error}") from None
    return send


def _result_receiver(execute: grpc.aio.StreamStreamCall) -> ReceiveResult:
    async def receive() -> StepResult:
        try:
            message = await execute.read()
        except grpc.aio.AioRpcError as error:
            raise PeerLostError(f"worker Execute stream failed: {error.code().name} "
                                f"{error.details()}") from None
        if message is grpc.aio.EOF:
            raise PeerLostError("the worker closed the Execute stream")
        return wire.result_from_proto(message)
    return receive


def _batch_publisher(tokens: grpc.aio.StreamUnaryCall) -> PublishBatch:
    async def publish(batch: TokenBatch) -> None:
        try:
            await tokens.write(wire.token_batch_to_proto(batch))
        except (grpc.aio.AioRpcError, grpc.aio.UsageError) as error:
            raise PeerLostError(f"detokenizer Tokens stream failed: {error}") from None
    return publish
