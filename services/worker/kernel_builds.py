"""JIT kernel modules built on a thread while the worker loads its weights and sets up.

On a bare GPU machine the first use of a JIT-compiled kernel waits for its compiler (FlashInfer's
sampling module alone is about a minute of nvcc, its attention modules as long again), and the
worker's warm-up met them one after another. The modules the backends name (`kernel_builds`)
need neither the weights nor the KV pool, and a build waits on compiler processes, not on the
GIL: started first, on a thread beside start-up, they are built in one compiler run (all their
sources in parallel, see jit_module.py) and loaded, and the warm-up finds them ready.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from radixmesh.services.worker.attention import ATTENTION_BACKENDS
from radixmesh.services.worker.attention.base import KernelShapes
from radixmesh.services.worker.jit_module import JitModule, build_specs_together
from radixmesh.services.worker.kv_pool import resolve_kv_dtype
from radixmesh.services.worker.model_config import ModelConfig
from radixmesh.services.worker.parallel.sharding import even_range, kv_head_range
from radixmesh.services.worker.parallel.tensor_parallel import TensorParallel
from radixmesh.services.worker.sampling import SAMPLING_BACKENDS

logger = logging.getLogger(__name__)


class BackgroundKernelBuilds:
    """Builds `modules` together, then loads each, on a daemon thread from construction.
    `wait` returns once that ended. A failure is logged and the modules are left for their
    first use, which builds them again and fails there with the real error, where the worker
    reports start-up errors."""

    def __init__(self, modules: Sequence[JitModule],
                 build_specs: Callable[[list[Any]], None] = build_specs_together) -> None:
        self.modules = list(modules)
        self.failures: list[BaseException] = []
        self.seconds = 0.0
        self._build_specs = build_specs
        self._thread: threading.Thread | None = None
        if self.modules:
            self._thread = threading.Thread(target=self._run, daemon=True, name="kernel-builds")
            self._thread.start()

    def wait(self) -> bool:
        """Blocks until the modules are built and loaded; False when there were none."""
        if self._thread is None:
            return False
        self._thread.join()
        logger.info("kernel builds: %s built in one compiler run and loaded beside start-up, "
                    "ended %.1f s after they began (%s)", ", ".join(m.name for m in self.modules),
                    self.seconds, "failed" if self.failures else "ok")
        return True

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._build_specs([module.spec() for module in self.modules])
            for module in self.modules:
                module.load()
        except Exception as error:  # noqa: BLE001 (the first use reports it)
            logger.warning("background kernel build failed (it runs again on first use, "
                           "where its error counts): %s: %s", type(error).__name__, error)
            self.failures.append(error)
        self.seconds = time.perf_counter() - started


def worker_kernel_builds(model_config: ModelConfig, dtype: torch.dtype, kv_cache_dtype: str,
                         attention_backend: str, sampling_backend: str, parallel: TensorParallel,
                         prefix_groups: bool, device: torch.device) -> list[JitModule]:
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
