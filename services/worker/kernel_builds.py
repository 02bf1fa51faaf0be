"""JIT kernel builds run on a thread while the worker loads its weights and sets up.

On a bare GPU machine the first use of a JIT-compiled kernel waits for its compiler (FlashInfer's
sampling module alone is about a minute of nvcc), and the worker's warm-up met them one after
another. The builds a backend names (`kernel_builds`) need neither the weights nor the KV pool,
and a build waits on a compiler process, not on the GIL: started first, they overlap
everything up to the warm-up, which then loads what they built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)


class BackgroundKernelBuilds:
    """Runs `builds` in order on one daemon thread from construction. `wait` returns once all
    have ended; a build that failed is logged and left for its first use, which builds it
    again and fails there with the real error, where the worker reports start-up errors."""

    def __init__(self, builds: Sequence[Callable[[], object]]) -> None:
        self._builds = list(builds)
        self.seconds = 0.0
        self.failures: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="kernel-builds", daemon=True)
        if self._builds:
            self._thread.start()

    def wait(self) -> bool:
        """Blocks until every build has ended; False when there was none to wait for."""
        if not self._builds:
            return False
        self._thread.join()
        return True

    def _run(self) -> None:
        started = time.perf_counter()
        for build in self._builds:
            try:
                build()
            except Exception as error:  # noqa: BLE001 (the first use reports it)
                logger.warning("background kernel build failed (it runs again on first use, "
                               "where its error counts): %s: %s", type(error).__name__, error)
                self.failures.append(error)
        self.seconds = time.perf_counter() - started
