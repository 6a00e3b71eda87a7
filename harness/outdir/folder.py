"""``OutputFolder``: one run's exclusive, link-safe, ownership-checked results folder.

It composes the parts of ``robench.outdir``: the folder lock (``lock``), the ownership
manifest (``manifest``), atomic writes (``atomic``) and append-only logs (``log``), and adds
the writes a run makes: whole files, temp files for third-party writers, removal and setting
aside. The contract (what it writes, may delete and trusts) is the ``robench.outdir`` docstring.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from robench.errors import UserError
from robench.outdir.atomic import place
from robench.outdir.files import (
    ATTEMPTS,
    CREATE_FLAGS,
    TEMP_PREFIX,
    check_name,
    lstat,
    lstat_quiet,
    make_fresh_dir,
    open_folder,
    open_regular,
    probe_writable,
    sha256_fd,
    unique_name,
    why,
)
from robench.outdir.lock import FolderLock, check_unlocked
from robench.outdir.log import Logs
from robench.outdir.manifest import Entry, Manifest


class OutputFolder:
    """Exclusive, link-safe, ownership-checked access to one results folder (see
    ``robench.outdir``).

    Use as a context manager, or call ``close()``; ``OutputFolder.open(path)`` is the same as
    ``OutputFolder(path)``.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True,
                 inspect_only: bool = False) -> None:
        """Create the folder if missing, lock it, probe that it is writable, load its manifest.

        Raises UserError (one line) when the path is not a folder, is locked by another run,
        is not writable, or holds a link or a damaged file at robench's bookkeeping names.
        ``inspect_only`` (``robench plan``): write nothing (no folder, lock, probe or recovery),
        only refuse what opening would refuse, a lock held by a run included; for reading
        ``owns``/``foreign_conflicts``.
        """
        self.path = Path(path).absolute()  # not normalised: '..' after a link stays right
        self.created = False
        self._dirfd = -1
        self._lock: FolderLock | None = None
        self._closed = False
        self._temps: dict[str, tuple[int, int]] = {}  # temp_path names -> (st_dev, st_ino)
        if create and not inspect_only:
            try:
                self.path.mkdir(parents=True)
                self.created = True
            except FileExistsError:
                pass
            except OSError as err:
                raise UserError(f"cannot create the results folder ({why(err)})",
                                where=str(self.path)) from None
        self._dirfd = open_folder(self.path)
        self._manifest = Manifest(self._dirfd, self.path, self.created)
        self._logs = Logs(self._dirfd, self.path, self._manifest)
        try:
            if inspect_only:
                check_unlocked(self._dirfd, str(self.path))
                self._manifest.load()
                return
            self._lock = FolderLock.acquire(self._dirfd, str(self.path))
            probe_writable(self._dirfd, str(self.path))
            self._manifest.load()
            if self.created and not self._manifest.exists:
                try:  # a folder robench made is robench's from the start
                    self._manifest.update(lambda m: None)
                except OSError as err:
                    raise UserError(f"results folder is not writable ({why(err)})",
                                    where=str(self.path)) from None
            self._manifest.recover()
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> OutputFolder:
        """Open (and by default create) a results folder; see ``__init__``."""
        return cls(path, create=create)

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a forgotten close() must not keep the folder locked for the rest of the process
        if not getattr(self, "_closed", True):
            with suppress(Exception):
                self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def has_manifest(self) -> bool:
        """Whether the folder holds a robench ownership manifest."""
        return self._manifest.exists

    # -- opening ----------------------------------------------------------------------------
    # -- ownership --------------------------------------------------------------------------
    def owns(self, name: str) -> bool:
        """True only if ``name`` is a regular file (not a link) whose content matches what
        robench recorded when it wrote it."""
        self._check_open()
        check_name(name)
        return self._manifest.owns(name)

    def foreign_conflicts(self, names: Iterable[str]) -> list[str]:
        """The given names that exist in the folder (as anything) but are not robench's."""
        self._check_open()
        result = []
        for name in dict.fromkeys(names):
            check_name(name)
            if self._lstat(name) is not None and not self.owns(name):
                result.append(name)
        return result

    def refuse_foreign(self, names: Iterable[str]) -> None:
        """Raise the one-line UserError naming ``foreign_conflicts(names)``, if any."""
        conflicts = self.foreign_conflicts(names)
        if conflicts:
            shown = ", ".join(conflicts[:6]) + (" ..." if len(conflicts) > 6 else "")
            raise UserError(f"results folder holds files robench did not write: {shown}; "
                            "choose another --out or move them away", where=str(self.path))

    # -- writing ----------------------------------------------------------------------------
    def write_text(self, name: str, text: str, *, encoding: str = "utf-8") -> None:
        """Atomically write ``text`` (no newline translation) to ``name``; see write_bytes."""
        self.write_bytes(name, text.encode(encoding))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomically replace ``name`` with ``data`` and record it as robench's.

        Refuses (UserError) a link or a file robench does not own at ``name``. Any OSError
        becomes a UserError naming the file; the old file and the folder stay as they were.
        """
        self._check_open()
        check_name(name)
        data = bytes(data)
        existed = self._require_replaceable(name)
        size, digest = len(data), hashlib.sha256(data).hexdigest()
        previous = self._manifest.entry(name)
        temp = None
        try:
            temp, fd = self._new_temp(name, pending=(size, digest))
            place(fd, data, temp, name, dir_fd=self._dirfd)
        except BaseException as err:
            self._abandon(temp, name, previous)
            if isinstance(err, OSError):
                raise self._write_error(name, err, existed) from None
            raise
        self._finish(name, temp, size, digest)

    def append_line(self, name: str, line: str) -> None:
        """Append one line (a newline is added if missing) to the log ``name``.

        The log is opened with O_APPEND|O_NOFOLLOW; a link or a foreign file at ``name`` is
        refused. A failed append is cut back so the log keeps only whole lines.
        """
        self._check_open()
        check_name(name)
        self._logs.append(name, line)

    @contextmanager
    def temp_file(self, name: str) -> Iterator[Path]:
        """``with folder.temp_file("curve.png") as tmp: fig.savefig(tmp)`` commits on success,
        discards the temp file on error (an OSError becomes a UserError naming ``name``)."""
        temp = self.temp_path(name)
        try:
            yield temp
        except OSError as err:
            self.discard(temp)
            raise self._write_error(name, err, self._lstat(name) is not None) from None
        except BaseException:
            self.discard(temp)
            raise
        self.commit(temp, name)

    def temp_path(self, name: str) -> Path:
        """A new, empty, exclusively created file for a third-party writer; its name ends with
        ``name`` (so writers that guess a format from the suffix see the right one). Pass it to
        ``commit`` or ``discard``."""
        self._check_open()
        check_name(name)
        try:
            temp, fd = self._new_temp(name)
            try:
                info = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise self._write_error(name, err, False) from None
        self._temps[temp] = (info.st_dev, info.st_ino)
        return self.path / temp

    def commit(self, temp: str | os.PathLike[str], name: str) -> None:
        """Replace ``name`` with the finished file from ``temp_path`` and record it.

        On any refusal or error the temp file is removed and ``name`` stays as it was.
        """
        self._check_open()
        check_name(name)
        temp_name = self._issued(temp)
        expected = self._temps.pop(temp_name)
        previous = self._manifest.entry(name)
        try:
            self._require_replaceable(name)
            fd = open_regular(self._dirfd, temp_name)
            if fd is None:
                raise UserError("its temporary file vanished or was replaced by a link",
                                where=self._where(name))
            try:
                info = os.fstat(fd)
                if (info.st_dev, info.st_ino) != expected:
                    raise UserError("its temporary file was replaced", where=self._where(name))
                size, digest = info.st_size, sha256_fd(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._manifest.add_pending(name, previous, size, digest)
            os.replace(temp_name, name, src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)
        except BaseException as err:
            self._abandon(temp_name, name, previous)
            if isinstance(err, OSError):
                raise self._write_error(name, err,
                                        lstat_quiet(self._dirfd, name) is not None) from None
            raise
        self._finish(name, temp_name, size, digest)

    def discard(self, temp: str | os.PathLike[str]) -> None:
        """Remove a temp file from ``temp_path`` that will not be committed."""
        self._check_open()
        temp_name = self._issued(temp)
        del self._temps[temp_name]
        self._abandon(temp_name, None, None)

    # -- removing ---------------------------------------------------------------------------
    def remove(self, name: str) -> bool:
        """Remove ``name`` if robench owns it; False if absent; UserError if not robench's."""
        self._check_open()
        check_name(name)
        where = self._where(name)
        if name in self._logs:
            self._logs.close(name)
        if self._lstat(name) is None:
            if self._manifest.entry(name) is not None:
                with suppress(OSError):
                    self._manifest.set_entry(name, None)
            return False
        if not self.owns(name):
            raise UserError("robench did not write this file (or it was changed since); it is "
                            "left in place", where=where)
        try:
            os.unlink(name, dir_fd=self._dirfd)
        except OSError as err:
            raise UserError(f"could not remove ({why(err)})", where=where) from None
        with suppress(OSError):  # an entry for a missing file proves nothing: harmless
            self._manifest.set_entry(name, None)
        return True

    def set_aside(self, names: Iterable[str], stamp: str) -> Path | None:
        """Move the given files that robench owns into a new sub-folder ``previous-<stamp>/``
        (``previous-<stamp>-2/`` ... if taken) and return it; None if none is robench's.
        Files robench does not own, and missing names, are left alone."""
        self._check_open()
        names = list(dict.fromkeys(names))
        for name in names:
            check_name(name)
        for name in names:
            if name in self._logs:
                self._logs.close(name)
        owned = [name for name in names if self.owns(name)]
        if not owned:
            return None
        base = f"previous-{stamp}"
        check_name(base)
        folder, subfd = make_fresh_dir(self._dirfd, base, str(self.path))
        moved: dict[str, Any] = {}
        try:
            for name in owned:
                try:
                    os.rename(name, name, src_dir_fd=self._dirfd, dst_dir_fd=subfd)
                except OSError as err:
                    raise UserError(f"could not move it into {folder}/ ({why(err)})",
                                    where=self._where(name)) from None
                moved[name] = self._manifest.entry(name)
        finally:
            os.close(subfd)
            if moved:
                with suppress(OSError):
                    self._manifest.set_aside(folder, moved)
        return self.path / folder

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Record the logs' final hashes, drop unused temp files, release the lock. Idempotent;
        disk errors here are ignored (everything written stays provably robench's)."""
        if self._closed:
            return
        try:
            for name in self._logs.names():
                with suppress(OSError):
                    self._logs.close(name)
            for temp in list(self._temps):
                del self._temps[temp]
                self._abandon(temp, None, None)
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        logs = getattr(self, "_logs", None)  # absent if opening the folder failed
        if logs is not None:
            logs.drop_all()
        if self._lock is not None:
            self._lock.release(self._dirfd)
        if self._dirfd >= 0:
            with suppress(OSError):
                os.close(self._dirfd)
            self._dirfd = -1
        if self._lock is not None:
            self._lock.forget()
            self._lock = None

    # -- helpers ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("OutputFolder is closed")

    def _where(self, name: str) -> str:
        return str(self.path / name)

    def _lstat(self, name: str) -> os.stat_result | None:
        return lstat(self._dirfd, name)

    def _require_replaceable(self, name: str) -> bool:
        """UserError unless ``name`` is absent or robench's; returns whether it exists."""
        where = self._where(name)
        try:
            info = self._lstat(name)
        except OSError as err:
            raise UserError(f"cannot inspect ({why(err)})", where=where) from None
        if info is None:
            return False
        if stat.S_ISLNK(info.st_mode):
            raise UserError("is a symbolic link; robench neither follows nor replaces links it "
                            "did not make: remove it or choose another --out", where=where)
        if name in self._logs:
            raise UserError("is a log this run is appending to; it cannot be replaced",
                            where=where)
        if not self.owns(name):
            raise UserError("robench did not write this file (or it was changed since), so it "
                            "will not replace it: move it away or choose another --out",
                            where=where)
        return True

    def _issued(self, temp: str | os.PathLike[str]) -> str:
        temp_name = Path(temp).name
        if Path(temp) != self.path / temp_name or temp_name not in self._temps:
            raise ValueError(f"not a temp file issued by this OutputFolder: {temp}")
        return temp_name

    def _new_temp(self, name: str, pending: tuple[int, str] | None = None) -> tuple[str, int]:
        """Record, then exclusively create, a unique temp file for ``name``; (temp, fd)."""
        previous = self._manifest.entry(name)
        for _ in range(ATTEMPTS):
            temp = unique_name(TEMP_PREFIX, f".{name}")
            self._manifest.add_temp(temp, name, pending, previous)
            try:
                return temp, os.open(temp, CREATE_FLAGS, 0o666, dir_fd=self._dirfd)
            except OSError as err:
                with suppress(OSError):
                    self._manifest.drop_temp(temp)
                if not isinstance(err, FileExistsError):
                    raise
        raise OSError(errno.EEXIST, "no free temporary name")

    def _abandon(self, temp: str | None, name: str | None, previous: Entry | None) -> None:
        """Best effort after a failed write: drop the temp file, restore the entry."""
        if temp is not None:
            with suppress(OSError):
                os.unlink(temp, dir_fd=self._dirfd)
        self._manifest.undo(temp, name, previous)

    def _finish(self, name: str, temp: str, size: int, digest: str) -> None:
        """After the rename: make the pending entry final (the file is already in place)."""
        try:
            self._manifest.finish(name, temp, size, digest)
        except OSError as err:  # the pending entry already proves the new file is robench's
            raise UserError(f"was written but the ownership manifest could not be updated "
                            f"({why(err)})", where=self._where(name)) from None

    def _write_error(self, name: str, err: OSError, existed: bool) -> UserError:
        tail = "; the previous version is unchanged" if existed else ""
        return UserError(f"could not write ({why(err)}){tail}", where=self._where(name))
