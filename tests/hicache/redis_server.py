"""A real `redis-server` for the page index tests: a temporary port and directory, no
persistence, killed and restarted at will (a restart is an empty Redis on the same port)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

STARTUP_TIMEOUT_S = 20.0
REDIS_BINARY = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
# The mark of a test module that needs a real redis-server.
NEEDS_REDIS = pytest.mark.skipif(REDIS_BINARY is None, reason="redis-server is not installed "
                                 "(apt-get install redis-server)")


def _free_port(cluster: bool = False) -> int:
    """A free port; for a cluster node one whose bus port (port + 10000) is free too, so
    below 55536."""
    if not cluster:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    draw = random.Random()
    while True:
        port = draw.randrange(20000, 45000)
        try:
            with socket.socket() as first, socket.socket() as bus:
                first.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None,
                 cluster: bool = False) -> None:
        assert REDIS_BINARY is not None, "redis-server is not installed"
        self.directory = directory
        self.password = password
        self.cluster = cluster
        self.port = _free_port(cluster)
        self.process: subprocess.Popen | None = None

    def url(self, password: str | None = None, user: str = "") -> str:
        """A redis:// URL of this server, with these credentials (default: its own)."""
        secret = self.password if password is None else password
        auth = f"{user}:{secret}@" if secret else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_BINARY, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            argv += ["--requirepass", self.password]
        if self.cluster:  # its nodes.conf goes to --dir
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:
                pass
            assert self.process.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server does not answer"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: what the index sees when Redis dies (nothing is saved)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           decode_responses=True, socket_timeout=5.0)


class RedisClusterServers:
    """Three cluster-enabled redis-servers made one Redis Cluster (no replicas)."""

    def __init__(self, directory: Path) -> None:
        self.servers = [RedisServer(directory / f"node{index}", cluster=True)
                        for index in range(3)]

    def url(self) -> str:
        """One node's URL: the client learns the others from it."""
        return self.servers[0].url()

    def start(self) -> None:
        assert REDIS_CLI is not None, "redis-cli is not installed"
        for server in self.servers:
            server.start()
        subprocess.run([REDIS_CLI, "--cluster", "create",
                        *(f"127.0.0.1:{server.port}" for server in self.servers),
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not all(server.client().execute_command("CLUSTER INFO")["cluster_state"] == "ok"
                      for server in self.servers):
            assert time.monotonic() < deadline, "the Redis Cluster never came up"
            time.sleep(0.1)

    def kill(self) -> None:
        for server in self.servers:
            server.kill()
