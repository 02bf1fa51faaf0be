"""Engines for tests, each checked for leaked KV pages when its test ends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from radixmesh.engine import Engine
from radixmesh.make_model import make_model
from radixmesh.services.scheduler.config import SchedulerConfig
from radixmesh.services.worker.config import WorkerConfig

ARCHITECTURES = ("llama", "qwen2", "qwen3")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: make_model(root / arch, arch) for arch in ARCHITECTURES}


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    """Builds engines from flag-like keyword arguments; after the test, every engine must be
    idle with free + cached + in-use pages == total (the idle integrity check)."""
    engines: list[Engine] = []

    def factory(model_path: Path, **flags: object) -> Engine:
        worker_fields = WorkerConfig.__dataclass_fields__
        worker = WorkerConfig(model_path=str(model_path), device="cpu",
                              **{k: v for k, v in flags.items() if k in worker_fields})
        scheduler = SchedulerConfig(**{k: v for k, v in flags.items() if k not in worker_fields})
        engine = Engine(worker, scheduler)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        assert not engine.has_work, "the test left requests in the engine"
        engine.scheduler.check_integrity()
        assert engine.scheduler.kv.allocator.num_free + \
            engine.scheduler.kv.cache.num_cached_pages == engine.info.num_pages
        assert engine.runner.num_requests == 0, "the worker kept state of finished requests"
