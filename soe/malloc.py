"""Keep freed memory in the process on Linux: glibc's allocator serves large blocks (over its mmap threshold,
128 KiB rising to at most 32 MiB) with mmap and gives them back to the kernel when they are freed, so a
training step that allocates the same large tensors every step (logits, activations, the instantiated Θ(h),
the bank's gradient) pays first-touch page faults on all of them again, every step: writing into fresh pages
runs at a fraction of memory bandwidth.

`keep_freed_memory` tells glibc to serve large blocks from the heap and not to trim it (mallopt M_MMAP_MAX = 0,
M_TRIM_THRESHOLD = 2 GiB), so every step after the first reuses pages that are already mapped (speed-ups in
bench/RESULTS.md). The price: the process keeps its peak heap until it exits. Every entry point calls it as its
own first step (the ``main`` of soe/cli, soe/train/cli.py, data_prep, the experiments; demo.py; tests/test_malloc.py
checks that each does); opt out with SOE_KEEP_FREED_MEMORY=0. Elsewhere (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's <malloc.h>
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Configure glibc once per process (idempotent); True when it took effect."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if sys.platform != "linux" or os.environ.get("SOE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt  # glibc and uClibc have it; musl does not (AttributeError)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
