"""keep_connected's waiting: retried until the peer comes, said once per reason at info."""

from __future__ import annotations

import asyncio
import logging

import pytest

from radixmesh.services.tokenizer.reconnect import keep_connected
from radixmesh.shared.errors import UnavailableError


def run_until_served(failures: list[str], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Connection attempts fail with `failures` in turn, then one serves; the reasons that
    `after` was told, in order."""
    reasons: list[str] = []
    attempts = iter(failures)
    served = asyncio.Event()

    async def connect() -> None:
        failure = next(attempts, None)
        if failure is not None:
            raise UnavailableError(failure)

    async def serve() -> None:
        served.set()
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.create_task(keep_connected("scheduler", connect, serve, reasons.append,
                                                  retry_delay=0.001, max_retry_delay=0.002))
        await asyncio.wait_for(served.wait(), 5)
        task.cancel()

    with caplog.at_level(logging.DEBUG, logger="radixmesh.services.tokenizer.reconnect"):
        asyncio.run(main())
    return reasons


def test_a_peer_still_starting_is_said_once_per_reason(caplog):
    failures = ["connection refused"] * 20 + ["handshake timed out"] * 5 + ["connection refused"]
    reasons = run_until_served(failures, caplog)
    assert reasons[:len(failures)] == failures  # then the served link, ended by the test
    said = [(record.levelno, record.getMessage()) for record in caplog.records]
    infos = [message for level, message in said if level == logging.INFO]
    assert infos == ["scheduler unavailable: connection refused",
                     "scheduler unavailable: handshake timed out",
                     "scheduler unavailable: connection refused"]
    assert sum(level == logging.DEBUG for level, _ in said) == len(failures) - 3
