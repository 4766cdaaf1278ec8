"""Keep freed memory in the process instead of handing it back to the system.

A training step allocates and frees blocks of the activations' sizes every iteration, and
with the data layer's scale jitter those sizes change from one iteration to the next. With
glibc's defaults the larger blocks go back to the kernel when they are freed (above the
mmap threshold a block is unmapped, and the top of the heap is trimmed), so the next
iteration faults every page in again and the kernel zeroes it: a quarter of the embedded
teacher's time went there (bench/results/embedded_demo_cpu.json). With higher thresholds
the allocator reuses those blocks, as PyTorch's caching allocator does on a GPU. The values
computed are the same; only where the memory comes from changes. Another C library keeps
its own policy.
"""
from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit systems: bigger blocks are still mapped
TOP_PAD = 64 << 20
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int

_state = None


def keep_freed_memory() -> bool:
    """Sets glibc's thresholds (once per process); True when they are in force, False on
    another C library."""
    global _state
    if _state is None:
        _state = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            libc = ctypes.CDLL(None)
            _state = all(libc.mallopt(p, v) == 1 for p, v in ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                               (_M_TOP_PAD, TOP_PAD),
                                                               (_M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return _state
