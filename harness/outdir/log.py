"""Append-only logs in a results folder (``OutputFolder.append_line``).

A log is opened once per run with ``O_APPEND|O_NOFOLLOW`` and kept open. Its manifest entry
records ``size`` and the sha256 of the log's first ``size`` bytes, so it is checked as an
append-only file: it stays robench's while that prefix is unchanged. A new log is recorded
(empty) before it is created, so a crash leaves a log robench can prove is its own; the entry
is re-hashed over the whole log when it is closed.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from pathlib import Path

from robench.errors import UserError
from robench.outdir.files import CLOEXEC, EMPTY_SHA256, fingerprint, lstat, why, write_all
from robench.outdir.manifest import Manifest

__all__ = ["Logs"]


class Logs:
    """The logs one run has open in the folder behind ``dir_fd``."""

    def __init__(self, dir_fd: int, path: Path, manifest: Manifest) -> None:
        self._dir_fd = dir_fd
        self._path = path
        self._manifest = manifest
        self._open: dict[str, tuple[int, int, int]] = {}  # name -> (fd, st_dev, st_ino)

    def __contains__(self, name: object) -> bool:
        return name in self._open

    def names(self) -> list[str]:
        """The logs now open."""
        return list(self._open)

    def append(self, name: str, line: str) -> None:
        """Append one line (a newline is added if missing) to the log ``name`` (a checked
        plain name), opening it first; a failed append is cut back to whole lines."""
        data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
        if name not in self._open:
            self._open_log(name)
        fd = self._open[name][0]
        try:
            before = os.fstat(fd).st_size
        except OSError as err:
            raise UserError(f"could not append to the log ({why(err)})",
                            where=self._where(name)) from None
        try:
            write_all(fd, data)
        except OSError as err:
            with suppress(OSError):
                os.ftruncate(fd, before)
            raise UserError(f"could not append to the log ({why(err)}); its earlier lines are "
                            "unchanged", where=self._where(name)) from None

    def close(self, name: str) -> None:
        """Close an open log and record the hash of all of it (best effort: the prefix stays
        valid); raises OSError only if closing its descriptor fails."""
        fd, dev, ino = self._open.pop(name)
        with suppress(OSError):
            os.fsync(fd)
        os.close(fd)
        found = fingerprint(self._dir_fd, name)
        log = ({"kind": "log", "size": found[2], "sha256": found[3]}
               if found is not None and found[:2] == (dev, ino) else None)
        with suppress(OSError):
            self._manifest.set_entry(name, log)

    def drop_all(self) -> None:
        """Close every descriptor without recording anything (releasing the folder)."""
        for fd, _, _ in self._open.values():
            with suppress(OSError):
                os.close(fd)
        self._open.clear()

    def _where(self, name: str) -> str:
        return str(self._path / name)

    def _open_log(self, name: str) -> None:
        where = self._where(name)
        try:
            info = lstat(self._dir_fd, name)
        except OSError as err:
            raise UserError(f"cannot inspect ({why(err)})", where=where) from None
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC
        if info is None:
            previous = self._manifest.entry(name)
            try:  # recorded first, so a crash leaves a log robench can prove is its own
                self._manifest.set_entry(name, {"kind": "log", "size": 0,
                                                "sha256": EMPTY_SHA256})
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=self._dir_fd)
            except OSError as err:
                with suppress(OSError):
                    self._manifest.set_entry(name, previous)
                raise UserError(f"could not create the log ({why(err)})", where=where) from None
        else:
            if stat.S_ISLNK(info.st_mode):
                raise UserError("is a symbolic link; robench does not write through links: "
                                "remove it", where=where)
            if not self._manifest.owns(name):
                raise UserError("robench did not write this log (or it was edited); it is left "
                                "as it is: move it away or choose another --out", where=where)
            try:
                fd = os.open(name, flags, dir_fd=self._dir_fd)
            except OSError as err:
                raise UserError(f"could not open the log ({why(err)})", where=where) from None
        try:
            mine = os.fstat(fd)
            same = info is None or (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)
            if not stat.S_ISREG(mine.st_mode) or not same:
                raise UserError("changed while robench opened it; try again", where=where)
            if (self._manifest.entry(name) or {}).get("kind") != "log":
                # a file robench wrote whole becomes its log
                found = fingerprint(self._dir_fd, name)
                if found is None or found[:2] != (mine.st_dev, mine.st_ino):
                    raise UserError("changed while robench opened it; try again", where=where)
                self._manifest.set_entry(name, {"kind": "log", "size": found[2],
                                                "sha256": found[3]})
        except OSError as err:
            os.close(fd)
            raise UserError(f"could not open the log ({why(err)})", where=where) from None
        except BaseException:
            os.close(fd)
            raise
        self._open[name] = (fd, mine.st_dev, mine.st_ino)
