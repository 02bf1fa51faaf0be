"""Starts a real front door (TokenizerServer: gRPC + HTTP) against an in-test MiniMesh."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from radixmesh.launcher.free_ports import pick_free_ports
from radixmesh.make_model import make_model
from radixmesh.services.detokenizer.detokenizer import Detokenizer
from radixmesh.services.tokenizer.config import TokenizerConfig
from radixmesh.services.tokenizer.server import TokenizerServer
from radixmesh.services.worker.base import ModelWorker
from radixmesh.services.worker.null_worker import NullWorker
from radixmesh.shared.step import WorkerInfo
from radixmesh.shared.tokenizer import TextTokenizer
from tests.mesh.mini_mesh import MiniMesh

READY_TIMEOUT_S = 20.0


@functools.cache
def tiny_model_dir() -> Path:
    """One tiny random model (with tokenizer) per test process, removed at exit."""
    root = Path(tempfile.mkdtemp(prefix="radixmesh-front-door-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return make_model(root / "tiny-llama")


@functools.cache
def tiny_tokenizer() -> TextTokenizer:
    return TextTokenizer.from_pretrained(tiny_model_dir())


def null_worker(num_pages: int = 8192, max_running_requests: int = 256,
                context_len: int = 2048) -> NullWorker:
    tokenizer = tiny_tokenizer()
    return NullWorker(WorkerInfo(
        model_id="null", num_pages=num_pages, page_size=1, context_len=context_len,
        vocab_size=tokenizer.vocab_size, eos_token_ids=tokenizer.eos_token_ids,
        kv_dtype="none", max_running_requests=max_running_requests))


@dataclass
class FrontDoor:
    server: TokenizerServer
    mesh: MiniMesh

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.server.config.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.server.config.port}"


@contextlib.asynccontextmanager
async def running_front_door(worker: ModelWorker | None = None,
                             **config: object) -> AsyncIterator[FrontDoor]:
    """A connected front door over a MiniMesh with `worker` (a NullWorker by default)."""
    mesh = MiniMesh(worker or null_worker(), Detokenizer(tiny_tokenizer()))
    address = await mesh.start()
    http_port, grpc_port = pick_free_ports(2)
    server = TokenizerServer(TokenizerConfig(
        model_path=str(tiny_model_dir()), port=http_port, grpc_port=grpc_port,
        scheduler_address=address, detokenizer_address=address, **config))
    try:
        await server.start()
        await asyncio.wait_for(server.wait_ready(), READY_TIMEOUT_S)
        yield FrontDoor(server, mesh)
    finally:
        await server.stop()
        await mesh.stop()
