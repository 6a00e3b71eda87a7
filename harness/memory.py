"""Memory housekeeping for long runs: what the process's peak resident memory is, and handing
freed heap memory back to the operating system while a run trains and attacks.

glibc's allocator keeps freed blocks in its arenas, fragmented, and torch's CPU tensors come
from it. A run frees every batch's and every defense's tensors, but the resident size grew
with what they had used: by tens of MB per defense across a suite, and by far more inside
one defense (a cold fgsm_lenet run, session 7: after each defense's trim the process was back
at 1.22-1.25 GB, while defense training left 250-860 MB of freed heap resident and an
active-set PGD-40 cell another 90-510 MB, whose batches shrink at every step; peak 2.32 GiB).

So robench now trims (``malloc_trim(0)``): after baseline and defense training, after each
defense, and every ``TRIM_PERIOD`` seconds from a thread while the work runs
(``trimming_freed_memory``). ``malloc_trim`` takes each arena's lock and moves no live
allocation, so it cannot change a number; its costs are the trim itself (tens of ms on a
heap with many free chunks) and re-faulting the pages it gave back. Measured on one fgsm_lenet
PGD-40 cell (5000 images, 3 eps, 2 threads, twice each; peak over the resident size before
the cell): no trimming +469 and +575 MB in 38 and 38 s; every 1 s +412 and +413 MB in 41 and
42 s; every 0.5 s +378 and +397 MB in 39 and 41 s; a trim after every 1000-image batch +432 MB
(contended run, against +587 MB without). The same cell's peak differs by ~100 MB from run to
run without trimming, so the single A/B pairs of earlier sessions (a trim after every cell
raising a 3-defense probe's peak from 1629 to 1782 MB) were within that noise. The full-suite
effect is in benchmarks/RESULTS.md.

Tried and not adopted: trimming only when the resident size has grown 64 MB since the last trim
(read every 0.5 s): it still trimmed 54-82 times in a BIM or PGD-40 cell and was not measurably
cheaper (BIM 66 and 76 s against 72 and 69 s for the plain period; PGD-40 43.6 vs 44.5 s) at the
same peaks (benchmarks/RESULTS.md, session 9); a fixed mmap threshold of 128 KiB
(``mallopt(M_MMAP_THRESHOLD)``: training 2.3x and APGD-T 1.3x slower, fresh pages are zeroed on
every batch) or of 4 MiB (1629 -> 1579 MB on the 3-defense probe, 1.55x slower);
``MALLOC_ARENA_MAX=1`` (1923 MB on that probe).

The multi-GB peaks of earlier fgsm_lenet runs (6.99 GB) were not the allocator: standard
AutoAttack ran torchattacks' APGD/APGD-T with autograd recording on, and their best-iterate
copies chained every step's iterate into one live graph (+1 GB for two target classes on 1000
images). The AutoAttack plugin now runs its components in ``torch.no_grad()``, as the reference
does.
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


#: seconds between two trims while a run's work runs (measurements: the module docstring)
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
