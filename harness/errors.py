"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations

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
