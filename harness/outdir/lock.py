"""One run per results folder: the folder lock.

``FolderLock.acquire`` takes an exclusive, non-blocking ``fcntl.flock`` on ``.robench.lock``,
after an in-process registry of held folders (so a second open in the same process is refused
even where flock is emulated per process, e.g. on NFS). A lock file left by a finished or
killed run is reused: the flock, not the file, is the lock, and it dies with its process.
``check_unlocked`` refuses as acquiring would without taking or creating anything, and
``held_elsewhere`` tells a reader whether another process is writing the folder.
"""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from contextlib import suppress

from robench.errors import UserError
from robench.outdir.files import (
    ATTEMPTS,
    CLOEXEC,
    LINK_ERRNOS,
    LOCK_NAME,
    LOCKED_MESSAGE,
    lstat_quiet,
    why,
)

__all__ = ["FolderLock", "check_unlocked", "held_elsewhere"]

_held: set[tuple[int, int]] = set()  # (st_dev, st_ino) of folders locked by this process
_held_guard = threading.Lock()


def _locked(where: str) -> UserError:
    return UserError(f"{LOCKED_MESSAGE} (wait for it or choose another --out)", where=where)


class FolderLock:
    """The lock of one results folder, held from ``acquire`` until ``release``."""

    def __init__(self, key: tuple[int, int], fd: int, created: bool,
                 lock_id: tuple[int, int]) -> None:
        self._key: tuple[int, int] | None = key
        self._fd = fd
        self._created = created  # whether this run made the lock file (then it removes it)
        self._lock_id = lock_id  # (st_dev, st_ino) of the lock file

    @classmethod
    def acquire(cls, dir_fd: int, where: str) -> FolderLock:
        """Take the lock of the folder behind ``dir_fd``: in-process registry first, then flock
        on ``.robench.lock``. Raises the one-line UserError naming ``where`` if it cannot."""
        info = os.fstat(dir_fd)
        key = (info.st_dev, info.st_ino)
        with _held_guard:
            if key in _held:
                raise _locked(where)
            _held.add(key)
        try:
            fd, created, lock_id = _flock_file(dir_fd, where)
        except BaseException:
            with _held_guard:
                _held.discard(key)
            raise
        return cls(key, fd, created, lock_id)

    def release(self, dir_fd: int) -> None:
        """Remove the lock file if this run made it, close it (which releases the flock) and
        leave the registry. Idempotent; errors are ignored."""
        if self._fd >= 0:
            if self._created:  # remove only a lock file this run made, while holding it
                with suppress(OSError):
                    now = os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False)
                    if (now.st_dev, now.st_ino) == self._lock_id:
                        os.unlink(LOCK_NAME, dir_fd=dir_fd)
            with suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1

    def forget(self) -> None:
        """Leave the in-process registry (after ``release``; the folder may be reopened)."""
        if self._key is not None:
            with _held_guard:
                _held.discard(self._key)
            self._key = None


def _flock_file(dir_fd: int, where: str) -> tuple[int, bool, tuple[int, int]]:
    """Open (or create) ``.robench.lock`` without following links and flock it; (fd, created,
    (st_dev, st_ino)). Retries when a finishing run removes the file under us."""
    for _ in range(ATTEMPTS):
        created = True
        try:
            try:
                fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | CLOEXEC, 0o666, dir_fd=dir_fd)
            except FileExistsError:
                created = False
                fd = os.open(LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC,
                             dir_fd=dir_fd)
        except FileNotFoundError:
            continue  # removed by the run that just finished: try again
        except OSError as err:
            found = lstat_quiet(dir_fd, LOCK_NAME)
            if err.errno in LINK_ERRNOS or (found and stat.S_ISLNK(found.st_mode)):
                raise UserError(f"{LOCK_NAME} is a symbolic link; robench does not follow "
                                "links: remove it", where=where) from None
            if found is not None and not stat.S_ISREG(found.st_mode):
                raise UserError(f"{LOCK_NAME} is not a regular file: remove it",
                                where=where) from None
            raise UserError(f"results folder is not writable ({why(err)})",
                            where=where) from None
        try:
            mine = os.fstat(fd)
            if not stat.S_ISREG(mine.st_mode):
                raise UserError(f"{LOCK_NAME} is not a regular file: remove it", where=where)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _locked(where) from None
            except OSError as err:  # e.g. ENOLCK on a file system without locks
                raise UserError(f"cannot lock the results folder ({why(err)})",
                                where=where) from None
            try:  # the name must still be this file, not one removed by a finishing run
                now = os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            return fd, created, (mine.st_dev, mine.st_ino)
        os.close(fd)
    raise UserError(f"could not take the folder lock {LOCK_NAME}", where=where)


def check_unlocked(dir_fd: int, where: str) -> None:
    """Refuse as ``FolderLock.acquire`` would when a run holds the folder, without taking the
    lock or creating the lock file (a shared, non-blocking flock test on an existing one)."""
    info = os.fstat(dir_fd)
    with _held_guard:
        if (info.st_dev, info.st_ino) in _held:
            raise _locked(where)
    if held_elsewhere(dir_fd):
        raise _locked(where)


def held_elsewhere(dir_fd: int) -> bool:
    """Whether another process holds the lock of the folder behind ``dir_fd``: a shared,
    non-blocking flock test on its existing ``.robench.lock`` (never created, never waited
    on). False for a lock this process holds itself: what it reads there, it wrote."""
    info = os.fstat(dir_fd)
    with _held_guard:
        if (info.st_dev, info.st_ino) in _held:
            return False
    try:
        fd = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return False  # no lock file (or an odd one, which opening the folder reports)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the shared lock
    return False
