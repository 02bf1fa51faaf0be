"""Readiness of a core made of parts (replicas, nodes) whose own readiness flips on its own:
`wait_ready` / `wait_disconnected` wake on every change and read the core's `ready` anew.

Invariant: every change that may flip `ready` is followed by `changed()`; a waiter then
returns exactly when `ready` reads what it waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Readiness:
    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready
        self._changed = asyncio.Event()  # a fresh one per change: every waiter wakes once

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_ready(self) -> None:
        while not self._ready():
            await self._changed.wait()

    async def wait_disconnected(self) -> None:
        while self._ready():
            await self._changed.wait()
