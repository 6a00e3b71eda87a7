"""Progress bars and the run log: one place decides what reaches the terminal and run.log."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from tqdm import tqdm

#: progress bars and the run log only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False


class Reporter:
    """Prints one-line messages (unless quiet), mirrors them into a log, draws tqdm bars.

    ``log`` receives each timestamped line (the runner passes its results folder's
    ``append_line``, which never writes through a symbolic link).
    """

    def __init__(self, quiet: bool = False, log: Callable[[str], None] | None = None) -> None:
        self.quiet = quiet
        self.log = log
        self._overall: tqdm | None = None

    def info(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)
        if self.log is not None:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.log(f"{stamp} {message}")

    @contextlib.contextmanager
    def progress(self, total: int, desc: str) -> Iterator[tqdm]:
        bar = tqdm(total=total, desc=desc, leave=False, disable=self.quiet, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        try:
            yield bar
        finally:
            bar.close()

    # -- one overall line for a whole run ---------------------------------------------------
    def start_overall(self, total: float, desc: str) -> None:
        """A bar for the whole run over its estimated work units (``robench.estimate``), kept at
        the top while the per-stage bars come and go. Stages ``advance`` it as they finish and
        ``skip`` their units when they need no work (cached, already done), so tqdm's rate, and
        its ETA, are those of the work that is actually done. Nothing when quiet."""
        self.close_overall()
        if self.quiet or total <= 0:
            return
        self._overall = tqdm(total=total, desc=desc, position=0, leave=True, file=sys.stderr,
                             dynamic_ncols=True, mininterval=0.5, smoothing=0.1,
                             bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                        "[{elapsed} elapsed, ETA {remaining}]")

    def advance(self, units: float) -> None:
        """A stage of ``units`` work units finished."""
        if self._overall is not None and units > 0:
            # float sums: never past the total (tqdm warns, and the ETA turns negative)
            self._overall.update(min(units, self._overall.total - self._overall.n))

    def skip(self, units: float) -> None:
        """A stage of ``units`` work units needs no work: off the total, not counted as done."""
        if self._overall is not None and units > 0:
            self._overall.total = max(self._overall.n, self._overall.total - units)
            self._overall.refresh()

    def close_overall(self) -> None:
        if self._overall is not None:
            self._overall.close()
            self._overall = None
