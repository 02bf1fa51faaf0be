"""`radixmesh serve detokenizer`: the Detokenizer gRPC service."""

from __future__ import annotations

import asyncio
import logging

from radixmesh.services.detokenizer.batch_detokenizer import BatchDetokenizer
from radixmesh.services.detokenizer.config import DetokenizerConfig
from radixmesh.services.detokenizer.servicer import Broadcaster, DetokenizerServicer
from radixmesh.shared.grpc_service import host_port, start_server
from radixmesh.shared.protos_gen import internal_pb2, internal_pb2_grpc
from radixmesh.shared.span_recorder import SpanRecorder
from radixmesh.shared.tls import internal_server_tls
from radixmesh.shared.tokenizer import load_tokenizer
from radixmesh.shared.tracing import start_tracing, stop_tracing

logger = logging.getLogger(__name__)
SERVICE_NAME = internal_pb2.DESCRIPTOR.services_by_name["Detokenizer"].full_name


async def serve(config: DetokenizerConfig, broadcaster: Broadcaster | None = None) -> None:
    """Serves until cancelled. Health turns SERVING once the tokenizer is loaded.
    `broadcaster`: where the text goes (given by a caller that watches its subscribers)."""
    recorder = start_tracing("detokenizer", config)
    try:
        await _serve(config, recorder, broadcaster or Broadcaster())
    finally:
        stop_tracing(recorder)  # flushes what is queued, for SHUTDOWN_FLUSH_S at most


async def _serve(config: DetokenizerConfig, recorder: SpanRecorder,
                 broadcaster: Broadcaster) -> None:
    tokenizer = await asyncio.to_thread(load_tokenizer, config.model_path, config.revision,
                                        config.hf_token)
    servicer = DetokenizerServicer(BatchDetokenizer(tokenizer, recorder), broadcaster)
    server = await start_server(
        host_port(config.host, config.port),
        lambda grpc_server: internal_pb2_grpc.add_DetokenizerServicer_to_server(servicer,
                                                                                grpc_server),
        [SERVICE_NAME], tls=internal_server_tls(config))
    logger.info("detokenizer serving on port %d", server.port)
    await server.set_serving()
    try:
        # Not grpc's wait_for_termination: cancelled while streams are open, it leaves them
        # open and the stop below cancelled, so no subscriber or scheduler hears of the end.
        await asyncio.Event().wait()  # until cancelled
    finally:
        broadcaster.close()
        await server.stop()
