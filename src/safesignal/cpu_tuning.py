"""glibc allocator settings for CPU training and serving.

Measured here (benchmarks/train_overhead.py, README §Benchmarks): with glibc's defaults,
large activation buffers are mmap'ed and unmapped every step, and the page faults that follow
cost 15–20% of a CPU training step. Raising the mmap and trim thresholds keeps freed memory
in the heap for reuse. Setting them with mallopt at run time has the effect of the
MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ environment variables without a restart.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30  # buffers up to 1 GiB come from the heap and stay there


def tune_glibc_malloc() -> bool:
    """Apply the thresholds once per process; True if glibc accepted them (Linux only)."""
    if not sys.platform.startswith("linux") or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES) == 1
    return bool(ok)
