"""JIT kernel builds run on threads while the worker loads its weights and sets up.

On a bare GPU machine the first use of a JIT-compiled kernel waits for its compiler (FlashInfer's
sampling module alone is about a minute of nvcc, its attention modules as long again), and the
worker's warm-up met them one after another. The builds the backends name (`kernel_builds`)
need neither the weights nor the KV pool, and a build waits on a compiler process, not on the
GIL: started first, each on a thread of its own, they overlap one another and everything up to
the warm-up, which then loads what they built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

import torch

from radixmesh.services.worker.attention import ATTENTION_BACKENDS
from radixmesh.services.worker.attention.base import KernelShapes
from radixmesh.services.worker.kv_pool import resolve_kv_dtype
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.sharding import even_range, kv_head_range
from radixmesh.services.worker.parallel.tensor_parallel import TensorParallel
from radixmesh.services.worker.sampling import SAMPLING_BACKENDS

logger = logging.getLogger(__name__)


class BackgroundKernelBuilds:
    """Runs each of `builds` on a daemon thread of its own from construction. `wait` returns
    once all have ended; a build that failed is logged and left for its first use, which
    builds it again and fails there with the real error, where the worker reports start-up
    errors."""

    def __init__(self, builds: Sequence[Callable[[], object]]) -> None:
        self.failures: list[BaseException] = []
        self._started = time.perf_counter()
        self._ended: list[float] = []  # each build's end, appended by its own thread
        self._threads = [threading.Thread(target=self._run, args=(build,), daemon=True,
                                          name=f"kernel-build-{index}")
                         for index, build in enumerate(builds)]
        for thread in self._threads:
            thread.start()

    @property
    def seconds(self) -> float:
        """From construction to the end of the last build that has ended."""
        return max(self._ended, default=self._started) - self._started

    def wait(self) -> bool:
        """Blocks until every build has ended; False when there was none to wait for."""
        for thread in self._threads:
            thread.join()
        if self._threads:
            logger.info("kernel builds: %d on threads beside start-up, the last ended %.1f s "
                        "after they began (%d failed)", len(self._threads), self.seconds,
                        len(self.failures))
        return bool(self._threads)

    def _run(self, build: Callable[[], object]) -> None:
        try:
            build()
        except Exception as error:  # noqa: BLE001 (the first use reports it)
            logger.warning("background kernel build failed (it runs again on first use, "
                           "where its error counts): %s: %s", type(error).__name__, error)
            self.failures.append(error)
        self._ended.append(time.perf_counter())


def worker_kernel_builds(model_config: ModelConfig, dtype: torch.dtype, kv_cache_dtype: str,
                         attention_backend: str, sampling_backend: str, parallel: TensorParallel,
                         prefix_groups: bool, device: torch.device) -> list[Callable[[], object]]:
    """What the chosen attention and sampling backends will compile for this model, from its
    config alone (the weights need not exist yet); the heads are this rank's share, cut as the
    model cuts them."""
    query_heads = len(even_range(model_config.num_attention_heads, parallel, "attention heads"))
    kv_heads = len(kv_head_range(model_config.num_key_value_heads, parallel))
    windowed = frozenset(model_config.layer_sliding_window(layer) is not None
                         for layer in range(model_config.num_hidden_layers))
    shapes = KernelShapes(dtype, resolve_kv_dtype(kv_cache_dtype, dtype), model_config.head_dim,
                          query_heads // kv_heads, windowed, prefix_groups)
    return (ATTENTION_BACKENDS.get(attention_backend).kernel_builds(shapes, device)
            + SAMPLING_BACKENDS.get(sampling_backend).kernel_builds())
