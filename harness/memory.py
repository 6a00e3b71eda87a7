"""Memory housekeeping for long runs: what the process's peak resident memory is, and handing
freed heap memory back to the operating system between defenses.

A suite frees every defense's tensors (models, forget sets, adversarial batches) before the next
defense starts, but glibc's allocator keeps freed blocks in its arenas, fragmented, so the
resident size of a serial run grew by tens of MB per defense while the live tensors stayed the
same (measured on a 17-defense suite: live tensors 420-423 MB throughout, resident 1.29 GB ->
1.48 GB after two defenses; ``malloc_trim`` gave back 55-120 MB each time).

The multi-GB peaks of earlier fgsm_lenet runs (6.99 GB) were not the allocator: standard
AutoAttack ran torchattacks' APGD/APGD-T with autograd recording on, and their best-iterate
copies chained every step's iterate into one live graph (+1 GB for two target classes on 1000
images). The AutoAttack plugin now runs its components in ``torch.no_grad()``, as the reference
does. Fixing glibc's mmap threshold at 128 KiB (``mallopt(M_MMAP_THRESHOLD)``) was tried against
what was then taken for fragmentation: it made training 2.3x and APGD-T 1.3x slower (fresh
pages are zeroed on every batch) and was not adopted.

Tried on three fgsm_lenet defenses with FGSM, PGD-10 (5000 images), R+FGSM, transfer and IBP
cells (peak RSS by VmHWM; 1629 MB as it is): ``malloc_trim`` after every cell, not only after
every defense, raised the peak to 1782 MB (a trimmed heap is grown again by the next cell, and
less of it is reused); ``MALLOC_ARENA_MAX=1`` raised it to 1923 MB; a fixed mmap threshold of
4 MiB lowered it to 1579 MB but made the run 1.55x slower. None was adopted. An active-set PGD
cell raises resident memory by 90-510 MB while it runs (not established why; one guess: its
batches shrink at every step, so the allocator is asked for a new size each time); trimming
after the defense gives it back. In a cold fgsm_lenet run the resident size after each defense's
trim stayed at 1.22-1.25 GB; the peak (2.32 GiB) built up inside one defense, from the heap that
defense training leaves (250-860 MB) plus the cells' transients (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: bookkeeping only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False


@cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> bool:
    """Return the allocator's free pages to the OS; False where the C library cannot."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None  # glibc only
    if trim is None:
        return False
    trim(0)
    return True


def release_freed_memory() -> None:
    """Collect garbage cycles and return the allocator's free pages to the OS (a no-op where
    the C library cannot)."""
    gc.collect()
    _malloc_trim()


#: seconds between two trims while a run's work runs (``trimming_freed_memory``). On one
#: fgsm_lenet PGD-40 cell (5000 images, 3 eps, 2 threads; twice each, peak over the resident
#: size before it): no trimming +469/+575 MB in 38/38 s, every 1 s +412/+413 MB in 41/42 s,
#: every 0.5 s +378/+397 MB in 39/41 s
TRIM_PERIOD = 0.5


@contextmanager
def trimming_freed_memory(period: float = TRIM_PERIOD) -> Iterator[int]:
    """Return freed heap pages to the OS every ``period`` seconds while the block runs, from a
    daemon thread (``malloc_trim`` takes the allocator's locks, so it is safe beside torch;
    it moves no live allocation, so no number can change). Yields nothing useful; the thread
    is stopped and joined on exit. Where the C library cannot trim, no thread is started."""
    if _libc() is None or getattr(_libc(), "malloc_trim", None) is None:
        yield 0
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period):
            _malloc_trim()

    thread = threading.Thread(target=loop, name="robench-trim", daemon=True)
    try:
        thread.start()  # inside: an interrupt right after it still stops the thread
        yield 1
    finally:
        stop.set()
        thread.join()


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_text() -> str:
    return f"peak RSS {peak_rss_bytes() / 2**30:.2f} GB"


__all__ = ["TRIM_PERIOD", "peak_rss_bytes", "peak_rss_text", "release_freed_memory",
           "trimming_freed_memory"]
