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
