"""Memory housekeeping for long runs: what the process's peak resident memory is, and handing
freed heap memory back to the operating system while a run trains and attacks.

Why trim: glibc's allocator keeps freed blocks in its arenas, fragmented, and torch's CPU
tensors come from it. A run frees every batch's and every defense's tensors, but without help
the resident size keeps what they once used: a little per defense across a suite, and far more
inside one defense (training, and active-set attacks whose batches shrink at every step, leave
hundreds of MB of freed heap resident). That freed heap, not live data, set the peak of a
long suite.

So robench trims (``malloc_trim(0)``): after baseline and defense training, after each
defense, and every ``TRIM_PERIOD`` seconds from a thread while the work runs
(``trimming_freed_memory``). ``malloc_trim`` takes each arena's lock and moves no live
allocation, so it cannot change a number; its costs are the trim itself and re-faulting the
pages it gave back, a few per cent of attack time. A periodic trim bounds the freed heap
inside a cell too, which trims between cells cannot.

Alternatives that were measured and not adopted (trimming only after the resident size grew
by a threshold, a fixed ``mallopt(M_MMAP_THRESHOLD)``, ``MALLOC_ARENA_MAX=1``) were either no
cheaper at the same peak or much slower, because fresh pages are zeroed on every batch. The
measurements behind this design, and the full-suite peaks, are in benchmarks/RESULTS.md
("Memory housekeeping: the measurements behind robench.memory").

The allocator is not the only cause of large peaks: a graph kept alive by autograd holds every
iterate it chains. That is why library attacks that need no parameter gradients run under
``torch.no_grad()`` (the AutoAttack plugin does so, as the reference implementation does).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
import sys
import threading
from collections.abc import Callable, Iterator
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


def _trim_function() -> Callable[[int], int] | None:
    libc = _libc()
    return getattr(libc, "malloc_trim", None) if libc is not None else None  # glibc only


def _malloc_trim() -> bool:
    """Return the allocator's free pages to the OS; False where the C library cannot."""
    trim = _trim_function()
    if trim is None:
        return False
    trim(0)
    return True


def release_freed_memory() -> None:
    """Collect garbage cycles and return the allocator's free pages to the OS (a no-op where
    the C library cannot)."""
    gc.collect()
    _malloc_trim()


#: seconds between two trims while a run's work runs (why this period: benchmarks/RESULTS.md)
TRIM_PERIOD = 0.5


@contextmanager
def trimming_freed_memory(period: float = TRIM_PERIOD) -> Iterator[int]:
    """Return freed heap pages to the OS every ``period`` seconds while the block runs, from a
    daemon thread (``malloc_trim`` takes the allocator's locks, so it is safe beside torch;
    it moves no live allocation, so no number can change). Yields 1 while a thread trims, 0
    where the C library cannot trim (no thread then); the thread is stopped and joined on
    exit."""
    if _trim_function() is None:
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
