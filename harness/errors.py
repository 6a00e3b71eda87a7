"""User-facing errors: the CLI prints these as one line and exits with code 2."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input (suite file, CLI option, environment).

    ``where`` names the file and/or key path so the message can point at the problem.
    """

    def __init__(self, message: str, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)
