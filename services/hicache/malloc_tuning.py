"""glibc's malloc, told to keep the few-MiB buffers the hicache service goes through.

Every page it moves passes through fresh buffers of 2-4 MiB (a file read, a batch to send, a
batch received). By default glibc maps each such buffer from the kernel and unmaps it when
freed, or trims the heap soon after, so the next buffer faults its memory in page by page
again. Served from a heap that keeps up to TRIM_THRESHOLD free, page fetch between two nodes
went ~30% faster on CPU (load-tests/cpu/fetch_bandwidth.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20   # glibc's largest; a buffer below it comes from the heap
TRIM_THRESHOLD = 256 << 20  # free heap kept for the next buffers before any is given back


def keep_large_buffers() -> bool:
    """Applies the thresholds to this process; False (and nothing changed) off glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not applied:
        logger.info("malloc thresholds not applied: page moves fault fresh memory in")
    return applied
