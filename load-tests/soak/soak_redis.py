"""The soak's Redis (`--with-redis`): a real redis-server on a temporary port and directory,
holding the hicache service's page index, and the `redis-down` fault that kills it and brings
it back a few seconds later. Redis is a hint (design §4): requests must go on being served
while it is down, and the index fills again once it is back."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

STARTUP_TIMEOUT_S = 20.0
# The page index's counters on the hicache service's /metrics (services/hicache/metrics.py).
INDEX_METRICS = ("index_lookups", "index_remote_hit_pages", "index_errors",
                 "index_entries_written", "index_entries_removed", "index_connected",
                 "index_pages")


class SoakRedis:
    """One redis-server, no persistence: a restart is an empty Redis on the same port."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("--with-redis needs redis-server on PATH "
                             "(apt-get install redis-server)")
        self.binary = binary
        self.directory = directory
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.down_s = 0.0  # seconds it spent killed, over the run

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not come up")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is saved."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _answers(self) -> bool:
        return self._command(b"PING").startswith(b"+PONG")

    def num_keys(self) -> int | None:
        """Keys Redis holds now (None: it does not answer). After a restart it starts empty, so
        keys at the end show that the index filled again after the last redis-down."""
        reply = self._command(b"DBSIZE")
        return int(reply[1:].strip()) if reply.startswith(b":") else None

    def _command(self, command: bytes) -> bytes:
        """One inline command's reply line, or b"" when Redis does not answer."""
        with contextlib.suppress(OSError):
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(command + b"\r\n")
                return sock.recv(64)
        return b""


@contextlib.contextmanager
def soak_redis() -> Iterator[SoakRedis]:
    with tempfile.TemporaryDirectory(prefix="soak-redis-") as folder:
        server = SoakRedis(Path(folder))
        server.start()
        try:
            yield server
        finally:
            server.kill()


async def redis_down(server: SoakRedis, down_seconds: float) -> None:
    """Kills Redis, waits `down_seconds`, starts it again (empty). Redis comes back even when
    the soak ends (cancels this) meanwhile: the figures at the end are read from it."""
    started = time.monotonic()
    server.kill()
    try:
        await asyncio.sleep(down_seconds)
    finally:
        server.start()  # blocking, but for a few ms: it must not be skipped by a cancellation
        server.restarts += 1
        server.down_s += time.monotonic() - started


def index_figures(metrics_url: str, wait_s: float = 30.0) -> dict[str, float]:
    """The page index's counters as the hicache service reports them, waiting up to `wait_s`
    for it to answer (a last fault may have killed it just before the end; {}: it never did)."""
    give_up = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(metrics_url, timeout=5) as reply:
                text = reply.read().decode()
            break
        except OSError:
            if time.monotonic() > give_up:
                return {}
            time.sleep(0.5)
    figures: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removeprefix("radixmesh:hicache_").removesuffix("_total")
            if name in INDEX_METRICS:
                figures[name] = figures.get(name, 0.0) + sample.value
    return figures
