"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: error messages only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False


class UserError(Exception):
    """A mistake in the user's input (suite file, CLI option, environment).

    ``where`` names the file and/or key path so the message can point at the problem.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def key_path(loc: tuple[Any, ...]) -> str:
    """``("attacks", 1, "params", "steps")`` -> ``attacks[1].params.steps``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


class Interrupted(Exception):
    """A run stopped by Ctrl-C or SIGTERM; its message says what was kept (exit code 130)."""


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them.

    For bookkeeping that must happen together: a finished cell's files and the count the
    interrupt message reports (a SIGTERM between the two said "0 cells finished" while the cell
    was on disk). Python-level handlers, not a signal mask: a process signal can land on any of
    torch's threads, whose masks a mask set here would not cover. Only the main thread can set
    handlers (and only it receives them); elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda s, _f: pending.append(s)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            # None: the handler was not set from Python; the default is the nearest to it
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)  # now through the handler the run had before


def nested_params_message(err: Any, owner: str) -> str:
    """One line for a pydantic ``ValidationError`` of params nested in another plugin's params
    (e.g. an unlearning method's ``method_params``): the key path, what is wrong, the value, and
    ``owner`` (e.g. ``"for unlearning method 'ssd'"``)."""
    first = err.errors()[0]
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    got = "" if first["type"] in ("missing", "extra_forbidden") else \
        f" (got {first.get('input')!r})"
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"{key_path(tuple(first['loc']))}: {msg}{got} {owner}{extra}"
