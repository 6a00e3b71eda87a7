"""Memory housekeeping for long runs: what the process's peak resident memory is, and handing
freed heap memory back to the operating system between defenses.

A suite frees every defense's tensors (models, forget sets, adversarial batches) before the next
defense starts, but glibc's allocator keeps freed blocks in its arenas, fragmented, so the
resident size of a serial run grew by tens of MB per defense while the live tensors stayed the
same (measured on a 17-defense suite: live tensors 420-423 MB throughout, resident 1.29 GB ->
1.48 GB after two defenses; ``malloc_trim`` gave back 55-120 MB each time). The peak itself came
from torchattacks' APGD-T inside standard AutoAttack: its per-step temporaries pile up in the
heap (100 images, 100 steps: +231 MB resident, all of it free memory that ``malloc_trim`` gives
back). glibc raises its mmap threshold each time a large block is freed, so later blocks of that
size come from the heap and fragment it; ``limit_heap_growth`` fixes the threshold at 128 KiB
(``mallopt(M_MMAP_THRESHOLD)``), so large tensors are mapped and unmapped and a freed one goes
straight back to the OS (the same run: +0 MB retained, peak +137 MB instead of +231 MB).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
from functools import cache

#: bookkeeping only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False


#: glibc's ``mallopt`` parameter number of M_MMAP_THRESHOLD, and the threshold robench sets
M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES = -3, 128 * 1024


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_heap_growth() -> bool:
    """Large allocations mapped, not carved from the heap (glibc only; see the module
    docstring). Returns whether it applied; once per process is enough."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    return bool(mallopt is not None and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)


def release_freed_memory() -> None:
    """Collect garbage cycles and return the allocator's free pages to the OS (a no-op where
    the C library cannot)."""
    gc.collect()
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None  # glibc only
    if trim is not None:
        trim(0)


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_text() -> str:
    return f"peak RSS {peak_rss_bytes() / 2**30:.2f} GB"


__all__ = ["limit_heap_growth", "peak_rss_bytes", "peak_rss_text", "release_freed_memory"]
