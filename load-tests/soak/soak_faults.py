"""The faults the soak injects into a running `radixmesh up`, one every few seconds.

- `kill`: SIGKILL of a random service (`up` should restart it; the others stay up).
- `stop-worker`: SIGSTOP of the worker for a few seconds, then SIGCONT (a hung peer).
- `slow-client`: an HTTP stream read a few bytes at a time through a tiny receive buffer.
- `poison`: one bad request, which must fail alone with 4xx / INVALID_ARGUMENT.
- `redis-down` (`--with-redis` only): SIGKILL of the page index's redis-server, started
  again (empty) a few seconds later; serving goes on, Redis being a hint (soak_redis.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import soak_redis

from radixmesh.client import AsyncClient, RadixMeshClientError


@dataclass
class Target:
    """The mesh under test, and the soak's knobs for faults."""

    up_pid: int
    http_url: str
    grpc_address: str
    model: str
    context_len: int
    deadline: float
    grace: float
    stop_seconds: float = 3.0
    slow_seconds: float = 8.0
    redis: soak_redis.SoakRedis | None = None  # the page index's Redis, with --with-redis
    redis_down_seconds: float = 3.0


@dataclass
class FaultLog:
    counts: Counter = field(default_factory=Counter)  # "kill:worker", "poison:deep-json", ...
    events: list[dict] = field(default_factory=list)
    poison: dict[str, Counter] = field(default_factory=dict)  # poison kind -> its outcomes
    kills: list[tuple[str, float]] = field(default_factory=list)  # (service, when)
    background: set[asyncio.Task] = field(default_factory=set)
    stopped: set[int] = field(default_factory=set)  # pids under SIGSTOP right now

    def add(self, kind: str, started: float, result: str) -> None:
        self.counts[kind] += 1
        self.events.append({"at_s": round(started, 2), "kind": kind, "result": result})


def service_pids(up_pid: int) -> dict[str, int]:
    """`up`'s live services by name, read from /proc (`radixmesh.serve --log-level L NAME`)."""
    found = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if not entry.name.isdigit():
                continue
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(stat[1]) != up_pid or stat[0] == "Z":
                continue
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            found[argv[argv.index(b"--log-level") + 2].decode()] = int(entry.name)
    return found


async def kill_service(target: Target, rng: random.Random, log: FaultLog) -> None:
    pids = service_pids(target.up_pid)
    if not pids:
        log.add("kill:none-running", time.monotonic(), "no service alive to kill")
        return
    name = rng.choice(sorted(pids))
    with contextlib.suppress(ProcessLookupError):
        os.kill(pids[name], signal.SIGKILL)
    log.kills.append((name, time.monotonic()))
    log.add(f"kill:{name}", time.monotonic(), f"pid {pids[name]}")


async def stop_worker(target: Target, rng: random.Random, log: FaultLog) -> None:
    """SIGSTOP, a pause, SIGCONT: the worker hangs without its connections closing."""
    pid = service_pids(target.up_pid).get("worker")
    started = time.monotonic()
    if pid is None:
        log.add("stop-worker", started, "no worker running (restarting)")
        return
    log.stopped.add(pid)
    try:
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(target.stop_seconds)
    except ProcessLookupError:
        pass
    finally:
        resume(log, pid)
    log.add("stop-worker", started, f"pid {pid} stopped {target.stop_seconds:g}s")


def resume(log: FaultLog, pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
    log.stopped.discard(pid)


async def slow_client(target: Target, rng: random.Random, log: FaultLog) -> None:
    """Starts, in the background, a stream read 64 bytes every half second."""
    started = time.monotonic()
    task = asyncio.create_task(_slow_read(target, log, started))
    log.background.add(task)
    task.add_done_callback(log.background.discard)


async def _slow_read(target: Target, log: FaultLog, started: float) -> None:
    host, port = target.http_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": target.model, "prompt": "slow " * 8, "stream": True,
                       "max_tokens": min(1500, target.context_len // 2)}).encode()
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # back-pressure, soon
    sock.setblocking(False)
    got, result, status = 0, "read to the end", b""
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        reader, writer = await asyncio.open_connection(sock=sock, limit=64)
        writer.write(head + body)
        deadline = time.monotonic() + target.slow_seconds
        while time.monotonic() < deadline:
            chunk = await reader.read(64)
            if not chunk:
                break
            got += len(chunk)
            status = status or chunk.split(b"\r\n", 1)[0]  # "HTTP/1.1 200 OK"
            await asyncio.sleep(0.5)
        else:
            result = "left early"
        writer.close()
    except OSError as error:
        result = f"{type(error).__name__}"
    except asyncio.CancelledError:
        result = "cut short by the end of the soak"
    finally:
        sock.close()
    log.add("slow-client", started,
            f"{status.decode(errors='replace')}: {result} after {got} bytes")


def _http_poison(make_body: Callable[[Target], bytes]) -> Callable[[Target], Awaitable[str]]:
    async def send(target: Target) -> str:
        timeout = aiohttp.ClientTimeout(total=target.deadline + target.grace)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                async with session.post(f"{target.http_url}/v1/completions",
                                        data=make_body(target),
                                        headers={"Content-Type": "application/json"}) as reply:
                    await reply.read()
                    return f"http:{reply.status}"
            except TimeoutError:
                return "lost"
            except aiohttp.ClientError as error:
                return f"http:{type(error).__name__}"
    return send


def _json(target: Target, **fields: object) -> bytes:
    # ensure_ascii (the default) writes "\ud800" as its escape: valid JSON, invalid text.
    return json.dumps({"model": target.model, "prompt": "hello", "max_tokens": 4,
                       **fields}).encode()


def _grpc_poison(**request: object) -> Callable[[Target], Awaitable[str]]:
    async def send(target: Target) -> str:
        fields = {key: value(target) if callable(value) else value
                  for key, value in request.items()}
        async with AsyncClient(target.grpc_address) as client:
            try:
                await asyncio.wait_for(client.complete(max_new_tokens=4, timeout=target.deadline,
                                                       **fields), target.deadline + target.grace)
            except TimeoutError:
                return "lost"
            except RadixMeshClientError as error:
                return f"grpc:{error.code}"
        return "grpc:OK"
    return send


POISONS: dict[str, Callable[[Target], Awaitable[str]]] = {
    "lone-surrogate-stop": _http_poison(lambda t: _json(t, stop=["\ud800"])),
    "prompt-over-context": _http_poison(
        lambda t: _json(t, prompt=[11] * (t.context_len + 64))),
    "malformed-json": _http_poison(lambda t: b'{"model": "m", "prompt": "hi", "max_tokens": '),
    "deep-json": _http_poison(lambda t: b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000
                              + b"}"),
    "huge-stop-list": _http_poison(lambda t: _json(t, stop=[f"s{i}" for i in range(20_000)])),
    "grpc-prompt-over-context": _grpc_poison(input_ids=lambda t: [11] * (t.context_len + 64)),
    "grpc-token-out-of-vocab": _grpc_poison(input_ids=[1, 2, 2**31 - 1]),
}


async def _serving(target: Target) -> bool:
    """True once a small request succeeds, within one deadline."""
    give_up = time.monotonic() + target.deadline
    async with AsyncClient(target.grpc_address) as client:
        while time.monotonic() < give_up:
            with contextlib.suppress(RadixMeshClientError, TimeoutError):
                await asyncio.wait_for(client.complete(text="probe", max_new_tokens=1,
                                                       timeout=2.0), 3.0)
                return True
            await asyncio.sleep(0.5)
    return False


def expected_rejection(outcome: str) -> bool:
    """A poisoned request must fail alone, as the client's fault: 4xx or INVALID_ARGUMENT
    (one skipped because the mesh was down from an earlier fault is no finding either)."""
    if outcome.startswith("http:") and outcome[5:].isdigit():
        return 400 <= int(outcome[5:]) < 500
    return outcome in ("grpc:INVALID_ARGUMENT", "grpc:OUT_OF_RANGE", "skipped:mesh-down")


async def poison(target: Target, rng: random.Random, log: FaultLog) -> None:
    name = rng.choice(sorted(POISONS))
    started = time.monotonic()
    # Sent once the mesh serves, so that a 503 / UNAVAILABLE is the poison's doing, not the
    # trail of an earlier fault.
    outcome = await POISONS[name](target) if await _serving(target) else "skipped:mesh-down"
    log.poison.setdefault(name, Counter())[outcome] += 1
    log.add(f"poison:{name}", started, outcome)


async def redis_down(target: Target, rng: random.Random, log: FaultLog) -> None:
    started = time.monotonic()
    if target.redis is None:
        log.add("redis-down", started, "no Redis in this soak (--with-redis)")
        return
    result = "cut short by the end of the soak"
    try:
        await soak_redis.redis_down(target.redis, target.redis_down_seconds)
        result = f"port {target.redis.port} down {time.monotonic() - started:.1f}s, back empty"
    finally:
        log.add("redis-down", started, result)


INJECTORS = {"kill": kill_service, "stop-worker": stop_worker, "slow-client": slow_client,
             "poison": poison, "redis-down": redis_down}
