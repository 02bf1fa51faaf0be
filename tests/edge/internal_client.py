"""A hand-made client of the internal streams, as a foreign service would be: Submit batches to
the scheduler, Tokens batches to the detokenizer, Subscribe to the detokenizer's text."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from radixmesh.shared import wire
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc


class TextSubscriber:
    """Every TextDelta the detokenizer broadcasts, gathered by request id."""

    def __init__(self, detokenizer: str) -> None:
        self._channel = grpc.aio.insecure_channel(detokenizer)
        self.detokenizer = internal_pb2_grpc.DetokenizerStub(self._channel)
        self.text: dict[str, str] = {}
        self.finishes: dict[str, internal_pb2.TextDelta] = {}
        self._changed = asyncio.Event()
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> TextSubscriber:
        subscription = self.detokenizer.Subscribe(common_pb2.Empty())
        await subscription.initial_metadata()  # subscribed: no batch is missed from here on
        self._reader = asyncio.create_task(self._read(subscription))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        await self._channel.close()

    async def _read(self, subscription: grpc.aio.UnaryStreamCall) -> None:
        async for batch in subscription:  # read as the front door reads it: columns, then rows
            for delta in map(wire.text_delta_to_proto, wire.text_batch_from_proto(batch)):
                self.text[delta.rid] = self.text.get(delta.rid, "") + delta.text
                if delta.HasField("finish"):
                    self.finishes[delta.rid] = delta
            self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    async def wait_finished(self, rids: list[str], timeout: float = 60.0) -> None:
        await self.wait_for(lambda: all(rid in self.finishes for rid in rids), timeout)
