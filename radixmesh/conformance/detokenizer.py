"""The Detokenizer contract (protos/internal.proto `Detokenizer`): what a replacement must do.

The suite plays the scheduler (a Tokens stream of registrations and token batches) and a
tokenizer (a Subscribe stream of text batches). It knows nothing of the tokenizer's vocabulary,
so it checks text by consistency: the same tokens sent at once or one batch at a time must
give the same text.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc

from radixmesh.conformance.runner import Target, expect, greet
from radixmesh.shared import wire
from radixmesh.shared.mesh_protocol import Hello
from radixmesh.shared.protos_gen import common_pb2, internal_pb2, internal_pb2_grpc
from radixmesh.shared.requests import FinishKind, FinishReason, TokenDelta
from radixmesh.shared.token_batch import DetokenizeRegistration, TokenBatch

CALLER = Hello("scheduler", implementation="conformance")
# Low ids: inside any real tokenizer's vocabulary.
TOKENS = [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]
LENGTH = FinishReason(FinishKind.LENGTH)


def _stub(target: Target) -> internal_pb2_grpc.DetokenizerStub:
    return internal_pb2_grpc.DetokenizerStub(target.channel)


class _Session:
    """A subscription plus a Tokens stream, both opened after a Hello."""

    def __init__(self, target: Target) -> None:
        self._target = target
        self.text: dict[str, str] = {}
        self.finishes: dict[str, internal_pb2.TextDelta] = {}
        self.rids_seen: list[str] = []
        self._changed = asyncio.Event()

    async def __aenter__(self) -> _Session:
        peer = await greet(self._target, _stub(self._target).Hello, "detokenizer")
        metadata = self._target.caller.stream_metadata(peer)
        self._subscription = _stub(self._target).Subscribe(common_pb2.Empty(), metadata=metadata)
        await self._subscription.initial_metadata()  # subscribed: no batch is missed now
        self._reader = asyncio.create_task(self._read())
        self.tokens = _stub(self._target).Tokens(metadata=metadata)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._reader.cancel()
        self._subscription.cancel()
        self.tokens.cancel()

    async def _read(self) -> None:
        async for batch in self._subscription:
            for delta in map(wire.text_delta_to_proto, wire.text_batch_from_proto(batch)):
                self.rids_seen.append(delta.rid)
                self.text[delta.rid] = self.text.get(delta.rid, "") + delta.text
                if delta.HasField("finish"):
                    self.finishes[delta.rid] = delta
            self._changed.set()

    async def send(self, registrations: list[DetokenizeRegistration],
                   deltas: list[TokenDelta]) -> None:
        await self.tokens.write(wire.token_batch_to_proto(TokenBatch(registrations, deltas)))

    async def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(self._target.timeout):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(f"waited for {what}") from None

    async def finished(self, rids: list[str]) -> None:
        await self.wait_for(lambda: all(rid in self.finishes for rid in rids),
                            f"the finish of {rids}")


def _rid(name: str) -> str:
    return f"conf-{name}-{uuid.uuid4().hex[:8]}"


def _register(rid: str, stop: tuple[str, ...] = ()) -> DetokenizeRegistration:
    return DetokenizeRegistration(rid, stop, (), 0)


async def _whole_text(session: _Session) -> str:
    """The text of TOKENS sent in one batch, finished by length."""
    rid = _rid("whole")
    await session.send([_register(rid)], [TokenDelta(rid, TOKENS, LENGTH)])
    await session.finished([rid])
    return session.text[rid]


async def check_hello(target: Target) -> None:
    """Hello answers with the mesh protocol version and service "detokenizer"."""
    await greet(target, _stub(target).Hello, "detokenizer")


async def check_text_for_tokens(target: Target) -> None:
    """A registration and its tokens on the Tokens stream come out on every subscription as
    text deltas carrying the request's rid, ending with the finish the scheduler sent."""
    async with _Session(target) as session:
        text = await _whole_text(session)
        rid = next(iter(session.finishes))
        expect(bool(text), "no text for 12 tokens")
        finish = session.finishes[rid].finish
        expect(finish.type == "length", f"finished with {finish.type!r}, not 'length'")


async def check_incremental_text(target: Target) -> None:
    """Text is incremental: each delta holds only new text, so the same tokens sent one per
    batch concatenate to the same text as when sent in one batch."""
    async with _Session(target) as session:
        whole = await _whole_text(session)
        rid = _rid("pieces")
        await session.send([_register(rid)], [])
        for index, token in enumerate(TOKENS):
            last = index == len(TOKENS) - 1
            await session.send([], [TokenDelta(rid, [token], LENGTH if last else None)])
        await session.finished([rid])
        expect(session.text[rid] == whole, f"one token per batch gave {session.text[rid]!r}, "
               f"one batch gave {whole!r}")


async def check_stop_string(target: Target) -> None:
    """A registered stop string ends the request where the text first holds it: the request
    finishes with type "stop" (the detokenizer ends it, not the scheduler) and its text is
    what came before the stop string."""
    async with _Session(target) as session:
        whole = await _whole_text(session)
        middle = len(whole) // 2
        stop = whole[middle:middle + 2]
        expect(len(stop.strip()) > 0, f"no stop string to pick from the text {whole!r}")
        rid = _rid("stop")
        await session.send([_register(rid, (stop,))], [TokenDelta(rid, TOKENS)])
        await session.finished([rid])
        finish = session.finishes[rid].finish
        expect(finish.type == "stop", f"stop string {stop!r} in {whole!r} ended the request "
               f"with {finish.type!r}, not 'stop'")
        expected = whole[:whole.index(stop)]
        expect(session.text[rid] == expected,
               f"text {session.text[rid]!r} for stop {stop!r}; want {expected!r}")


async def check_unknown_rid_harmless(target: Target) -> None:
    """Tokens for a rid never registered are ignored or refused on their own: the batch's
    other requests are served and the stream stays open for the next batch."""
    async with _Session(target) as session:
        rid = _rid("known")
        await session.send([_register(rid)], [TokenDelta(_rid("unknown"), TOKENS[:2]),
                                               TokenDelta(rid, TOKENS[:2])])
        await session.send([], [TokenDelta(rid, TOKENS[2:4], LENGTH)])
        await session.finished([rid])
        expect(not session.tokens.done(), "the Tokens stream ended after an unknown rid")


async def check_new_stream_accepted(target: Target) -> None:
    """After a Tokens stream ends (the scheduler closed it), a new one is accepted and
    served: a restarted scheduler reconnects to the same detokenizer."""
    async with _Session(target) as session:
        await _whole_text(session)
        await session.tokens.done_writing()
        try:
            await asyncio.wait_for(session.tokens, target.timeout)
        except grpc.aio.AioRpcError as error:
            expect(False, f"closing a Tokens stream ended it with {error.code().name}")
    async with _Session(target) as session:
        expect(bool(await _whole_text(session)), "the second stream gave no text")


CHECKS = (check_hello, check_text_for_tokens, check_incremental_text, check_stop_string,
          check_unknown_rid_harmless, check_new_stream_accepted)
