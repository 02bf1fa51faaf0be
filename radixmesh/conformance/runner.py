"""Runs a suite's checks in order against one target and prints `PASS name` / `FAIL name: why`.

A check is an `async def check_NAME(target)` whose docstring is the rule a replacement must
follow; it fails by raising (`expect` for plain conditions). Checks are independent: each opens
the streams it needs, so one failure does not hide the rest.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

import grpc

from radixmesh.shared.mesh_protocol import MESH_PROTOCOL_VERSION, Hello
from radixmesh.shared.protos_gen import internal_pb2


class CheckFailed(Exception):
    """A check's rule was not followed; the message says how."""


def expect(condition: bool, reason: str) -> None:
    if not condition:
        raise CheckFailed(reason)


@dataclass
class Target:
    """The service under test, reached over one channel shared by a suite's checks."""

    address: str
    channel: grpc.aio.Channel
    timeout: float
    # The suite greets the target as the peer that normally calls it (a scheduler calls the
    # worker and the detokenizer, a tokenizer calls the scheduler).
    caller: Hello


Check = Callable[[Target], Awaitable[None]]


def check_name(check: Check) -> str:
    return check.__name__.removeprefix("check_")


def describe(checks: Sequence[Check]) -> str:
    """Every check's name and rule, the contract in words (`--list`)."""
    return "\n".join(f"{check_name(check)}\n    {' '.join((check.__doc__ or '').split())}"
                     for check in checks)


async def greet(target: Target, hello_rpc: Callable[..., Awaitable[internal_pb2.PeerHello]],
                service: str) -> Hello:
    """The target's answer to our Hello, checked for the protocol and the kind of service."""
    reply = Hello.from_message(await hello_rpc(
        internal_pb2.PeerHello(**target.caller.fields()), timeout=target.timeout))
    expect(reply.protocol_version == MESH_PROTOCOL_VERSION,
           f"Hello answers protocol {reply.protocol_version}, not {MESH_PROTOCOL_VERSION}")
    expect(reply.service == service, f"Hello answers service {reply.service!r}, not {service!r}")
    expect(bool(reply.instance_id), "Hello answers no instance_id")
    return reply


def _reason(error: BaseException, timeout: float) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"RPC failed with {error.code().name}: {error.details()}"
    if isinstance(error, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(error, CheckFailed):
        return str(error)
    return f"{type(error).__name__}: {error}"


async def run_checks(address: str, checks: Sequence[Check], caller: Hello, timeout: float,
                     out: TextIO) -> int:
    """Runs every check in order; 0 only if all pass."""
    failures = 0
    async with grpc.aio.insecure_channel(address) as channel:
        target = Target(address, channel, timeout, caller)
        for check in checks:
            try:
                # Twice the per-RPC timeout: a check makes several calls.
                async with asyncio.timeout(2 * timeout):
                    await check(target)
            except Exception as error:  # any failure is the check's, and the suite goes on
                failures += 1
                print(f"FAIL {check_name(check)}: {_reason(error, timeout)}", file=out,
                      flush=True)
            else:
                print(f"PASS {check_name(check)}", file=out, flush=True)
    print(f"{len(checks) - failures}/{len(checks)} checks passed against {address}", file=out)
    return 1 if failures else 0
