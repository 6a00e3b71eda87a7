"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

import signal
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: error messages only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False

#: the longest message and ``where`` a UserError prints: a value echoed from a hostile input
#: (an alias bomb's expansion) must not make the one line megabytes long
MAX_MESSAGE = 600
MAX_WHERE = 1000
#: Unicode categories escaped in error lines: control (line breaks, NEL), format (bidi
#: overrides, zero-width), line and paragraph separators, and the lone surrogates of a file
#: name that is not UTF-8 (they cannot be printed)
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def one_line(text: str, limit: int) -> str:
    """``text`` as one printable line of at most ``limit`` characters: line breaks, bidi and
    other invisible characters escaped (``\\u202e``), the middle cut when too long (a
    file path's start and a key path's end both stay). The ends are cut before escaping, so
    the work is bounded however long ``text`` is."""
    def escape(part: str) -> str:
        return "".join(c.encode("unicode_escape").decode("ascii")
                       if unicodedata.category(c) in _HIDDEN else c for c in part)

    if len(text) <= limit:
        text = escape(text)
        if len(text) <= limit:
            return text
        head = tail = text
    else:  # an escape only lengthens: ``limit`` characters from each end are enough
        head, tail = escape(text[:limit]), escape(text[-limit:])
    keep = limit - 5
    return head[:keep - keep // 3] + " ... " + tail[len(tail) - keep // 3:]


class UserError(Exception):
    """A mistake in the user's input (suite file, CLI option, environment).

    ``where`` names the file and/or key path so the message can point at the problem.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        # one bounded line, however large or strange the input it quotes
        message = one_line(str(message), MAX_MESSAGE)
        where = None if where is None else one_line(str(where), MAX_WHERE)
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
    handlers (and only it receives them); elsewhere this does nothing. When the block raises
    (e.g. a disk error), its error wins and a held signal is dropped: the run ends either way,
    and the error says what to fix."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        pending.append(signum)

    previous: dict[int, Any] = {}
    failed = False
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            # noted before the swap and inside try: a signal landing just after a swap (the
            # other handler still the run's) still gets this one restored
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, hold)
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _restore(previous, hold)
        for held in dict.fromkeys(pending):
            if not failed:
                signal.raise_signal(held)  # now through the handler the run had before


def _restore(previous: dict[int, Any], hold: Any) -> None:
    """Put the handlers back. A handler restored first can raise (a second signal) before the
    next is restored: the inner ``finally`` restores the rest anyway, so no signal is left
    held for good."""
    def put_back() -> None:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is hold:
                # None: the handler was not set from Python; the default is the nearest to it
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    try:
        put_back()
    finally:
        put_back()


def nested_params_message(err: Any, owner: str) -> str:
    """One line for a pydantic ``ValidationError`` of params nested in another plugin's params
    (e.g. an unlearning method's ``method_params``): the key path, what is wrong, the value, and
    ``owner`` (e.g. ``"for unlearning method 'ssd'"``)."""
    first = err.errors()[0]
    extra = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    shown = "" if first["type"] in ("missing", "extra_forbidden") else \
        repr(first.get("input"))
    got = f" (got {shown[:60] + '...' if len(shown) > 60 else shown})" if shown else ""
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    return f"{key_path(tuple(first['loc']))}: {msg}{got} {owner}{extra}"
