"""A JIT-compiled kernel module named ahead of its first use (FlashInfer's, the one kernel
library here that compiles at run time).

FlashInfer compiles each module with a ninja run of its own, all in one build directory whose
`.ninja_log` and `.ninja_deps` hold every module's records. Ninja takes no lock on them, so two
runs at once (as when each module was built on a thread of its own) can keep one run's records
or garble them, and a start that finds outputs without records compiles them all again: on an
H100 every start on a warm machine spent 60-70 s in ninja (`load-tests/results/fresh-start-*`),
which this explains (not yet confirmed with `ninja -d explain`). So the worker builds the
modules it names in one ninja run, which compiles their sources in parallel and keeps its
records whole, and only then loads them, each load's own ninja run finding its module up to
date.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JitModule:
    """`spec` writes the module's generated sources and returns its build description (a
    FlashInfer `JitSpec`); `load` returns the loaded module, building it first if it is not
    built (FlashInfer's cached getter, which the kernels' first use calls with the same
    arguments and so finds in memory)."""

    name: str
    spec: Callable[[], Any]
    load: Callable[[], object]


def build_specs_together(specs: list[Any]) -> None:
    """One ninja run for every spec (FlashInfer's own multi-module build, under its lock)."""
    from flashinfer.jit.core import build_jit_specs

    build_jit_specs(specs)
