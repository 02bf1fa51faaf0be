"""The hicache service's malloc thresholds take on glibc (its effect is a benchmark's:
load-tests/cpu/fetch_bandwidth.py)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_thresholds_take_on_glibc() -> None:
    # In a process of its own: they are process-wide.
    code = ("from radixmesh.services.hicache.malloc_tuning import keep_large_buffers\n"
            "assert keep_large_buffers()\n")
    subprocess.run([sys.executable, "-P", "-c", code], check=True, timeout=60)
