"""Progress bars and the run log: one place decides what reaches the terminal and run.log."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

#: progress bars and the run log only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False


class Reporter:
    """Prints one-line messages (unless quiet), mirrors them into a log file, draws tqdm bars."""

    def __init__(self, quiet: bool = False, log_path: Path | None = None) -> None:
        self.quiet = quiet
        self.log_path = log_path

    def info(self, message: str) -> None:
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)
        if self.log_path is not None:
            stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
            with open(self.log_path, "a", encoding="utf-8") as log:
                log.write(f"{stamp} {message}\n")

    @contextlib.contextmanager
    def progress(self, total: int, desc: str) -> Iterator[tqdm]:
        bar = tqdm(total=total, desc=desc, leave=False, disable=self.quiet, file=sys.stderr,
                   dynamic_ncols=True, mininterval=0.5)
        try:
            yield bar
        finally:
            bar.close()
