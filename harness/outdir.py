"""A results folder that robench writes into without harming anything else that is there.

``OutputFolder.open(path)`` gives one run exclusive use of a results folder and the only way
it writes, replaces or removes files there:

* **No links are followed.** Every file is created with ``O_EXCL``/``O_NOFOLLOW`` relative to a
  descriptor of the folder, finished files are put in place with ``os.replace`` (which replaces
  a name, never the target of a link), and a symbolic link found at an output, log, lock or
  manifest name is refused with one line (robench neither writes through it nor removes it).
  A folder path that is itself a link to a folder is accepted (``results -> /scratch/r``).
* **Only robench's own files are replaced or removed.** A hidden manifest
  (``.robench-manifest.json``) lists every file robench wrote in the folder with its size and
  sha256. A file is robench's (``owns``) only if it is a regular file whose content still
  matches the manifest; a file edited by hand, or any file in a folder without a manifest, is
  foreign and is never replaced, removed or moved. There is no override: a ``--force`` option
  of the caller must not widen this.
* **Old outputs survive until new ones exist.** Writes go to a unique temporary file in the
  same folder, are fsynced and then renamed over the old file; ``set_aside`` moves old outputs
  into a fresh ``previous-<stamp>/`` sub-folder instead of deleting them.
* **One run per folder.** ``open`` takes an exclusive, non-blocking ``fcntl.flock`` on
  ``.robench.lock`` (plus an in-process registry, so a second open in the same process is
  refused even where flock is emulated per process, e.g. on NFS); the loser gets
  ``UserError("another robench run is writing this folder")``. Temporary names carry the pid
  and 64 random bits, so two processes never share one.
* **The user's umask is kept.** Files are created with mode ``0o666`` and the kernel applies
  the umask (no ``mkstemp``, which would give 0600).
* **Disk errors are one line.** An ``OSError`` while writing (ENOSPC, EDQUOT, EACCES, EIO ...)
  removes the temporary file, leaves the old file as it was and raises ``UserError`` naming
  the file.

Crash safety: before a file is written the manifest records the temporary name and the new
content's hash as *pending* (the old hash stays valid), and after the rename the entry is
finalised. So after a crash (kill -9, OOM) the file under the output name is provably
robench's whichever version it is, and the next ``open`` removes the leftover temporary file
because the manifest names it. The probe file and the manifest's own temporary file are not
recorded; a crash in the microseconds they exist can leave one small hidden file that robench
never removes.

Logs (``append_line``): a log entry records ``size`` and the sha256 of the log's first ``size``
bytes, i.e. it is checked as an append-only file: the log is robench's while its recorded
prefix is unchanged (appending by hand keeps it robench's; editing earlier lines or truncating
does not). The entry is re-hashed over the whole log on ``close``; a run killed before closing
leaves the older, shorter prefix, which still matches.

The manifest is tamper-evident for accidents, not a security boundary: anyone who can edit
files in the folder can edit the manifest too. Between an ownership check and the rename a
process with write access to the folder can still swap files (it can only make robench replace
a name, never write through a link). Paths handed out by ``temp_path`` are opened by their
third-party writer by path, after robench created the file exclusively.

Platform: POSIX only (Linux, macOS): needs ``fcntl.flock``, ``O_NOFOLLOW`` and ``dir_fd``
support. An ``OutputFolder`` is meant for one run in one thread; it is not thread-safe. A
forked child inherits the lock descriptor and keeps the lock while it lives.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from robench.errors import UserError

__all__ = ["LOCK_NAME", "LOCKED_MESSAGE", "MANIFEST_NAME", "OutputFolder"]

LOCK_NAME = ".robench.lock"
MANIFEST_NAME = ".robench-manifest.json"
RESERVED_PREFIX = ".robench"  # every name starting with this is robench's bookkeeping
TEMP_PREFIX = ".robench-tmp-"
PROBE_PREFIX = ".robench-probe-"
MANIFEST_TEMP_PREFIX = ".robench-manifest-"
MANIFEST_FORMAT = "robench-output-manifest"
MANIFEST_VERSION = 1
LOCKED_MESSAGE = "another robench run is writing this folder"

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
# O_NOFOLLOW on a link fails with ELOOP (Linux, macOS) or EMLINK (FreeBSD).
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK})
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_CHUNK = 1 << 20
_ATTEMPTS = 16

_held: set[tuple[int, int]] = set()  # (st_dev, st_ino) of folders locked by this process
_held_guard = threading.Lock()


def _token() -> str:
    """A fresh name part: pid plus 64 random bits (tests monkeypatch this)."""
    return f"{os.getpid()}-{secrets.token_hex(8)}"


def _check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is one plain file name that is not robench's own."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name
            or (os.altsep is not None and os.altsep in name)):
        raise ValueError(f"not a plain file name: {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{name!r} is reserved for robench's bookkeeping")


def _is_plain(name: Any) -> bool:
    try:
        _check_name(name)
    except ValueError:
        return False
    return True


def _why(err: OSError) -> str:
    return err.strerror or str(err)


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (os.write may write fewer bytes than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def _sha256_fd(fd: int, limit: int | None = None) -> str:
    """sha256 of the file behind ``fd`` from its start (of its first ``limit`` bytes)."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = os.read(fd, _CHUNK if remaining is None else min(_CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return digest.hexdigest()


def _empty_manifest(created: bool) -> dict[str, Any]:
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "folder_created_by_robench": created, "files": {}, "temps": [], "previous": {}}


class OutputFolder:
    """Exclusive, link-safe, ownership-checked access to one results folder (see module doc).

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
        self._lockfd = -1
        self._lock_created = False
        self._lock_id: tuple[int, int] | None = None
        self._key: tuple[int, int] | None = None
        self._closed = False
        self._manifest: dict[str, Any] | None = None
        self._logs: dict[str, tuple[int, int, int]] = {}  # name -> (fd, st_dev, st_ino)
        self._temps: dict[str, tuple[int, int]] = {}  # temp_path names -> (st_dev, st_ino)
        if create and not inspect_only:
            try:
                self.path.mkdir(parents=True)
                self.created = True
            except FileExistsError:
                pass
            except OSError as err:
                raise UserError(f"cannot create the results folder ({_why(err)})",
                                where=str(self.path)) from None
        self._dirfd = self._open_dir()
        if inspect_only:
            try:
                self._check_unlocked()
                self._manifest = self._load_manifest()
            except BaseException:
                self._release()
                raise
            return
        try:
            self._lock()
            self._probe()
            self._manifest = self._load_manifest()
            if self.created and self._manifest is None:
                try:  # a folder robench made is robench's from the start
                    self._update(lambda m: None)
                except OSError as err:
                    raise UserError(f"results folder is not writable ({_why(err)})",
                                    where=str(self.path)) from None
            self._recover()
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
        return self._manifest is not None

    # -- opening ----------------------------------------------------------------------------
    def _open_dir(self) -> int:
        where = str(self.path)
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except OSError as err:
            if os.path.islink(self.path):
                raise UserError("is a symbolic link to something that is not a folder; "
                                "choose another --out", where=where) from None
            if isinstance(err, FileNotFoundError):
                raise UserError("results folder does not exist", where=where) from None
            if isinstance(err, NotADirectoryError):
                raise UserError("is not a folder; choose another --out", where=where) from None
            raise UserError(f"cannot open the results folder ({_why(err)})",
                            where=where) from None

    def _lock(self) -> None:
        """Take the folder lock: in-process registry first, then flock on ``.robench.lock``."""
        where = str(self.path)
        info = os.fstat(self._dirfd)
        key = (info.st_dev, info.st_ino)
        with _held_guard:
            if key in _held:
                raise UserError(f"{LOCKED_MESSAGE} (wait for it or choose another --out)",
                                where=where)
            _held.add(key)
        self._key = key
        for _ in range(_ATTEMPTS):
            created = True
            try:
                try:
                    fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                 | _CLOEXEC, 0o666, dir_fd=self._dirfd)
                except FileExistsError:
                    created = False
                    fd = os.open(LOCK_NAME, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC,
                                 dir_fd=self._dirfd)
            except FileNotFoundError:
                continue  # removed by the run that just finished: try again
            except OSError as err:
                found = self._lstat_quiet(LOCK_NAME)
                if err.errno in _LINK_ERRNOS or (found and stat.S_ISLNK(found.st_mode)):
                    raise UserError(f"{LOCK_NAME} is a symbolic link; robench does not follow "
                                    "links: remove it", where=where) from None
                if found is not None and not stat.S_ISREG(found.st_mode):
                    raise UserError(f"{LOCK_NAME} is not a regular file: remove it",
                                    where=where) from None
                raise UserError(f"results folder is not writable ({_why(err)})",
                                where=where) from None
            try:
                mine = os.fstat(fd)
                if not stat.S_ISREG(mine.st_mode):
                    raise UserError(f"{LOCK_NAME} is not a regular file: remove it", where=where)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise UserError(f"{LOCKED_MESSAGE} (wait for it or choose another --out)",
                                    where=where) from None
                except OSError as err:  # e.g. ENOLCK on a file system without locks
                    raise UserError(f"cannot lock the results folder ({_why(err)})",
                                    where=where) from None
                try:  # the name must still be this file, not one removed by a finishing run
                    now = os.stat(LOCK_NAME, dir_fd=self._dirfd, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
            except BaseException:
                os.close(fd)
                raise
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                self._lockfd, self._lock_created = fd, created
                self._lock_id = (mine.st_dev, mine.st_ino)
                return
            os.close(fd)
        raise UserError(f"could not take the folder lock {LOCK_NAME}", where=where)

    def _check_unlocked(self) -> None:
        """Refuse as ``_lock`` would when a run holds the folder, without taking the lock or
        creating the lock file (a shared, non-blocking flock test on an existing one)."""
        where = str(self.path)
        info = os.fstat(self._dirfd)
        with _held_guard:
            if (info.st_dev, info.st_ino) in _held:
                raise UserError(f"{LOCKED_MESSAGE} (wait for it or choose another --out)",
                                where=where)
        try:
            fd = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC,
                         dir_fd=self._dirfd)
        except OSError:
            return  # no lock file (or an odd one, which opening reports itself)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{LOCKED_MESSAGE} (wait for it or choose another --out)",
                            where=where) from None
        except OSError:
            pass
        finally:
            os.close(fd)  # releases the shared lock

    def _create_unique(self, prefix: str, suffix: str = "") -> tuple[str, int]:
        """A new file with a random name, created exclusively and without following links."""
        for _ in range(_ATTEMPTS):
            name = f"{prefix}{_token()}{suffix}"
            try:
                return name, os.open(name, _CREATE_FLAGS, 0o666, dir_fd=self._dirfd)
            except FileExistsError:
                continue
        raise OSError(errno.EEXIST, f"no free temporary name starting {prefix!r}")

    def _fill_and_place(self, fd: int, data: bytes, temp: str, name: str) -> None:
        """Write ``data`` to the open temp file, fsync and close it, then rename it to ``name``
        (the rename replaces a name, never the target of a link)."""
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)

    def _probe(self) -> None:
        """Prove the folder is writable with a unique, exclusively created file."""
        try:
            name, fd = self._create_unique(PROBE_PREFIX)
            try:
                _write_all(fd, b"ok\n")
            finally:
                os.close(fd)
                os.unlink(name, dir_fd=self._dirfd)
        except OSError as err:
            raise UserError(f"results folder is not writable ({_why(err)})",
                            where=str(self.path)) from None

    def _load_manifest(self) -> dict[str, Any] | None:
        where = str(self.path / MANIFEST_NAME)
        try:
            fd = os.open(MANIFEST_NAME, _READ_FLAGS, dir_fd=self._dirfd)
        except FileNotFoundError:
            return None
        except OSError as err:
            if err.errno in _LINK_ERRNOS:
                raise UserError("is a symbolic link; robench does not follow links: remove it",
                                where=where) from None
            raise UserError(f"cannot read the ownership manifest ({_why(err)})",
                            where=where) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UserError("is not a regular file: remove it", where=where)
            chunks = []
            while chunk := os.read(fd, _CHUNK):
                chunks.append(chunk)
        except OSError as err:
            raise UserError(f"cannot read the ownership manifest ({_why(err)})",
                            where=where) from None
        finally:
            os.close(fd)
        try:
            data = json.loads(b"".join(chunks).decode("utf-8"))
            valid = (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
                     and data.get("version") == MANIFEST_VERSION
                     and isinstance(data.get("files"), dict))
        except ValueError:
            valid = False
        if not valid:
            raise UserError("ownership manifest is damaged or from another version; move it "
                            "away (robench then treats every file here as foreign)", where=where)
        data.setdefault("folder_created_by_robench", False)
        if not isinstance(data.get("temps"), list):
            data["temps"] = []
        if not isinstance(data.get("previous"), dict):
            data["previous"] = {}
        return data

    def _recover(self) -> None:
        """After an interrupted run: remove the temp files its manifest names and the manifest
        temp files it left (a kill between creating and renaming one), settle entries."""
        if self._manifest is None:
            return
        self._drop_manifest_temps()
        temps = [t for t in self._manifest["temps"]
                 if isinstance(t, str) and t.startswith(TEMP_PREFIX) and "/" not in t]
        pending = [n for n, e in self._manifest["files"].items()
                   if _is_plain(n) and isinstance(e, dict) and "pending" in e]
        if not self._manifest["temps"] and not pending:
            return
        try:
            for temp in temps:
                info = self._lstat(temp)
                if info is not None and stat.S_ISREG(info.st_mode):
                    with suppress(FileNotFoundError):
                        os.unlink(temp, dir_fd=self._dirfd)
            settled = {name: self._settle(name, self._manifest["files"][name])
                       for name in pending}

            def apply(m: dict[str, Any]) -> None:
                m["temps"] = []
                m["files"].update(settled)

            self._update(apply)
        except OSError as err:
            raise UserError(f"could not tidy up after an interrupted run ({_why(err)})",
                            where=str(self.path)) from None

    def _drop_manifest_temps(self) -> None:
        """Remove ``.robench-manifest-<pid>-<16 hex>.tmp`` plain files: only robench makes names
        with its reserved prefix, and only the run holding the lock writes the manifest."""
        pattern = re.compile(re.escape(MANIFEST_TEMP_PREFIX) + r"\d+-[0-9a-f]{16}\.tmp")
        for name in os.listdir(self._dirfd):
            info = self._lstat(name) if pattern.fullmatch(name) else None
            if info is not None and stat.S_ISREG(info.st_mode):
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dirfd)

    def _settle(self, name: str, entry: dict[str, Any]) -> dict[str, Any]:
        """A pending entry becomes the new version if the file holds it, else the old one."""
        rest = {k: v for k, v in entry.items() if k != "pending"}
        new = entry.get("pending")
        if isinstance(new, dict) and self._matches(name, {"kind": "file", **new}):
            return {"kind": "file", "size": new.get("size"), "sha256": new.get("sha256")}
        return rest

    # -- ownership --------------------------------------------------------------------------
    def owns(self, name: str) -> bool:
        """True only if ``name`` is a regular file (not a link) whose content matches what
        robench recorded when it wrote it."""
        self._check_open()
        _check_name(name)
        if self._manifest is None:
            return False
        entry = self._manifest["files"].get(name)
        if not isinstance(entry, dict):
            return False
        pending = entry.get("pending")
        if isinstance(pending, dict) and self._matches(name, {"kind": "file", **pending}):
            return True
        return self._matches(name, entry)

    def _matches(self, name: str, entry: dict[str, Any]) -> bool:
        size, digest, kind = entry.get("size"), entry.get("sha256"), entry.get("kind")
        if not isinstance(size, int) or not isinstance(digest, str) or kind not in ("file",
                                                                                     "log"):
            return False
        fd = self._open_regular(name)
        if fd is None:
            return False
        try:
            actual = os.fstat(fd).st_size
            if kind == "file":
                return actual == size and _sha256_fd(fd) == digest
            return actual >= size and _sha256_fd(fd, size) == digest
        except OSError:
            return False
        finally:
            os.close(fd)

    def foreign_conflicts(self, names: Iterable[str]) -> list[str]:
        """The given names that exist in the folder (as anything) but are not robench's."""
        self._check_open()
        result = []
        for name in dict.fromkeys(names):
            _check_name(name)
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
        _check_name(name)
        data = bytes(data)
        existed = self._require_replaceable(name)
        size, digest = len(data), hashlib.sha256(data).hexdigest()
        previous = self._entry(name)
        temp = None
        try:
            temp, fd = self._new_temp(name, pending=(size, digest))
            self._fill_and_place(fd, data, temp, name)
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
        _check_name(name)
        data = (line if line.endswith("\n") else line + "\n").encode("utf-8")
        if name not in self._logs:
            self._open_log(name)
        fd = self._logs[name][0]
        try:
            before = os.fstat(fd).st_size
        except OSError as err:
            raise UserError(f"could not append to the log ({_why(err)})",
                            where=self._where(name)) from None
        try:
            _write_all(fd, data)
        except OSError as err:
            with suppress(OSError):
                os.ftruncate(fd, before)
            raise UserError(f"could not append to the log ({_why(err)}); its earlier lines are "
                            "unchanged", where=self._where(name)) from None

    def _open_log(self, name: str) -> None:
        where = self._where(name)
        try:
            info = self._lstat(name)
        except OSError as err:
            raise UserError(f"cannot inspect ({_why(err)})", where=where) from None
        flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
        if info is None:
            previous = self._entry(name)
            try:  # recorded first, so a crash leaves a log robench can prove is its own
                self._update(lambda m: m["files"].__setitem__(
                    name, {"kind": "log", "size": 0, "sha256": _EMPTY_SHA256}))
                fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=self._dirfd)
            except OSError as err:
                with suppress(OSError):
                    self._update(lambda m: self._put(m, name, previous))
                raise UserError(f"could not create the log ({_why(err)})", where=where) from None
        else:
            if stat.S_ISLNK(info.st_mode):
                raise UserError("is a symbolic link; robench does not write through links: "
                                "remove it", where=where)
            if not self.owns(name):
                raise UserError("robench did not write this log (or it was edited); it is left "
                                "as it is: move it away or choose another --out", where=where)
            try:
                fd = os.open(name, flags, dir_fd=self._dirfd)
            except OSError as err:
                raise UserError(f"could not open the log ({_why(err)})", where=where) from None
        try:
            mine = os.fstat(fd)
            same = info is None or (mine.st_dev, mine.st_ino) == (info.st_dev, info.st_ino)
            if not stat.S_ISREG(mine.st_mode) or not same:
                raise UserError("changed while robench opened it; try again", where=where)
            if (self._entry(name) or {}).get("kind") != "log":
                found = self._fingerprint(name)  # a file robench wrote whole becomes its log
                if found is None or found[:2] != (mine.st_dev, mine.st_ino):
                    raise UserError("changed while robench opened it; try again", where=where)
                log = {"kind": "log", "size": found[2], "sha256": found[3]}
                self._update(lambda m: self._put(m, name, log))
        except OSError as err:
            os.close(fd)
            raise UserError(f"could not open the log ({_why(err)})", where=where) from None
        except BaseException:
            os.close(fd)
            raise
        self._logs[name] = (fd, mine.st_dev, mine.st_ino)

    def _close_log(self, name: str) -> None:
        """Close a log and record the hash of all of it (best effort: the prefix stays valid)."""
        fd, dev, ino = self._logs.pop(name)
        with suppress(OSError):
            os.fsync(fd)
        os.close(fd)
        found = self._fingerprint(name)
        log = ({"kind": "log", "size": found[2], "sha256": found[3]}
               if found is not None and found[:2] == (dev, ino) else None)
        with suppress(OSError):
            self._update(lambda m: self._put(m, name, log))

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
        _check_name(name)
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
        _check_name(name)
        temp_name = self._issued(temp)
        expected = self._temps.pop(temp_name)
        previous = self._entry(name)
        try:
            self._require_replaceable(name)
            fd = self._open_regular(temp_name)
            if fd is None:
                raise UserError("its temporary file vanished or was replaced by a link",
                                where=self._where(name))
            try:
                info = os.fstat(fd)
                if (info.st_dev, info.st_ino) != expected:
                    raise UserError("its temporary file was replaced", where=self._where(name))
                size, digest = info.st_size, _sha256_fd(fd)
                os.fsync(fd)
            finally:
                os.close(fd)
            new = {"size": size, "sha256": digest}
            self._update(lambda m: self._put(
                m, name, {**(previous or {"kind": "file", **new}), "pending": new}))
            os.replace(temp_name, name, src_dir_fd=self._dirfd, dst_dir_fd=self._dirfd)
        except BaseException as err:
            self._abandon(temp_name, name, previous)
            if isinstance(err, OSError):
                raise self._write_error(name, err, self._lstat_quiet(name) is not None) from None
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
        _check_name(name)
        where = self._where(name)
        if name in self._logs:
            self._close_log(name)
        if self._lstat(name) is None:
            if self._entry(name) is not None:
                with suppress(OSError):
                    self._update(lambda m: self._put(m, name, None))
            return False
        if not self.owns(name):
            raise UserError("robench did not write this file (or it was changed since); it is "
                            "left in place", where=where)
        try:
            os.unlink(name, dir_fd=self._dirfd)
        except OSError as err:
            raise UserError(f"could not remove ({_why(err)})", where=where) from None
        with suppress(OSError):  # an entry for a missing file proves nothing: harmless
            self._update(lambda m: self._put(m, name, None))
        return True

    def set_aside(self, names: Iterable[str], stamp: str) -> Path | None:
        """Move the given files that robench owns into a new sub-folder ``previous-<stamp>/``
        (``previous-<stamp>-2/`` ... if taken) and return it; None if none is robench's.
        Files robench does not own, and missing names, are left alone."""
        self._check_open()
        names = list(dict.fromkeys(names))
        for name in names:
            _check_name(name)
        for name in names:
            if name in self._logs:
                self._close_log(name)
        owned = [name for name in names if self.owns(name)]
        if not owned:
            return None
        folder, subfd = self._make_aside_dir(stamp)
        moved: dict[str, Any] = {}
        try:
            for name in owned:
                try:
                    os.rename(name, name, src_dir_fd=self._dirfd, dst_dir_fd=subfd)
                except OSError as err:
                    raise UserError(f"could not move it into {folder}/ ({_why(err)})",
                                    where=self._where(name)) from None
                moved[name] = self._entry(name)
        finally:
            os.close(subfd)
            if moved:
                def apply(m: dict[str, Any]) -> None:
                    for name in moved:
                        m["files"].pop(name, None)
                    m["previous"][folder] = moved

                with suppress(OSError):
                    self._update(apply)
        return self.path / folder

    def _make_aside_dir(self, stamp: str) -> tuple[str, int]:
        base = f"previous-{stamp}"
        _check_name(base)
        for attempt in range(1, _ATTEMPTS + 1):
            folder = base if attempt == 1 else f"{base}-{attempt}"
            try:
                os.mkdir(folder, 0o777, dir_fd=self._dirfd)
            except FileExistsError:
                continue
            except OSError as err:
                raise UserError(f"could not create {folder}/ ({_why(err)})",
                                where=str(self.path)) from None
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC,
                             dir_fd=self._dirfd)
            except OSError as err:
                raise UserError(f"could not open {folder}/ ({_why(err)})",
                                where=str(self.path)) from None
            return folder, fd
        raise UserError(f"too many {base}* folders", where=str(self.path))

    # -- closing ----------------------------------------------------------------------------
    def close(self) -> None:
        """Record the logs' final hashes, drop unused temp files, release the lock. Idempotent;
        disk errors here are ignored (everything written stays provably robench's)."""
        if self._closed:
            return
        try:
            for name in list(self._logs):
                with suppress(OSError):
                    self._close_log(name)
            for temp in list(self._temps):
                del self._temps[temp]
                self._abandon(temp, None, None)
        finally:
            self._release()

    def _release(self) -> None:
        self._closed = True
        for fd, _, _ in self._logs.values():
            with suppress(OSError):
                os.close(fd)
        self._logs.clear()
        if self._lockfd >= 0:
            if self._lock_created:  # remove only a lock file this run made, while holding it
                with suppress(OSError):
                    now = os.stat(LOCK_NAME, dir_fd=self._dirfd, follow_symlinks=False)
                    if (now.st_dev, now.st_ino) == self._lock_id:
                        os.unlink(LOCK_NAME, dir_fd=self._dirfd)
            with suppress(OSError):
                os.close(self._lockfd)  # closing the descriptor releases the flock
            self._lockfd = -1
        if self._dirfd >= 0:
            with suppress(OSError):
                os.close(self._dirfd)
            self._dirfd = -1
        if self._key is not None:
            with _held_guard:
                _held.discard(self._key)
            self._key = None

    # -- helpers ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("OutputFolder is closed")

    def _where(self, name: str) -> str:
        return str(self.path / name)

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self._dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _lstat_quiet(self, name: str) -> os.stat_result | None:
        try:
            return self._lstat(name)
        except OSError:
            return None

    def _open_regular(self, name: str) -> int | None:
        """A read descriptor for ``name`` if it is a regular file reached without a link."""
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=self._dirfd)
        except OSError:
            return None
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
        except OSError:
            pass
        os.close(fd)
        return None

    def _fingerprint(self, name: str) -> tuple[int, int, int, str] | None:
        """(st_dev, st_ino, size, sha256) of ``name`` if it is a regular file, not a link."""
        fd = self._open_regular(name)
        if fd is None:
            return None
        try:
            info = os.fstat(fd)
            return info.st_dev, info.st_ino, info.st_size, _sha256_fd(fd)
        except OSError:
            return None
        finally:
            os.close(fd)

    def _entry(self, name: str) -> dict[str, Any] | None:
        if self._manifest is None:
            return None
        entry = self._manifest["files"].get(name)
        return copy.deepcopy(entry) if isinstance(entry, dict) else None

    @staticmethod
    def _put(manifest: dict[str, Any], name: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            manifest["files"].pop(name, None)
        else:
            manifest["files"][name] = entry

    def _require_replaceable(self, name: str) -> bool:
        """UserError unless ``name`` is absent or robench's; returns whether it exists."""
        where = self._where(name)
        try:
            info = self._lstat(name)
        except OSError as err:
            raise UserError(f"cannot inspect ({_why(err)})", where=where) from None
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
        previous = self._entry(name)
        for _ in range(_ATTEMPTS):
            temp = f"{TEMP_PREFIX}{_token()}.{name}"

            def record(m: dict[str, Any], temp: str = temp) -> None:
                m["temps"].append(temp)
                if pending is not None:
                    new = {"size": pending[0], "sha256": pending[1]}
                    self._put(m, name, {**(previous or {"kind": "file", **new}), "pending": new})

            self._update(record)
            try:
                return temp, os.open(temp, _CREATE_FLAGS, 0o666, dir_fd=self._dirfd)
            except OSError as err:
                with suppress(OSError):
                    self._update(lambda m, temp=temp: m["temps"].remove(temp))
                if not isinstance(err, FileExistsError):
                    raise
        raise OSError(errno.EEXIST, "no free temporary name")

    def _abandon(self, temp: str | None, name: str | None,
                 previous: dict[str, Any] | None) -> None:
        """Best effort after a failed write: drop the temp file, restore the entry."""
        if temp is not None:
            with suppress(OSError):
                os.unlink(temp, dir_fd=self._dirfd)
        if self._manifest is None:
            return
        listed = temp is not None and temp in self._manifest["temps"]
        changed = name is not None and self._entry(name) != previous
        if listed or changed:
            def apply(m: dict[str, Any]) -> None:
                if listed:
                    m["temps"].remove(temp)
                if changed:
                    self._put(m, name, previous)

            with suppress(OSError):
                self._update(apply)

    def _finish(self, name: str, temp: str, size: int, digest: str) -> None:
        """After the rename: make the pending entry final (the file is already in place)."""
        def apply(m: dict[str, Any]) -> None:
            if temp in m["temps"]:
                m["temps"].remove(temp)
            m["files"][name] = {"kind": "file", "size": size, "sha256": digest}

        try:
            self._update(apply)
        except OSError as err:  # the pending entry already proves the new file is robench's
            raise UserError(f"was written but the ownership manifest could not be updated "
                            f"({_why(err)})", where=self._where(name)) from None

    def _write_error(self, name: str, err: OSError, existed: bool) -> UserError:
        tail = "; the previous version is unchanged" if existed else ""
        return UserError(f"could not write ({_why(err)}){tail}", where=self._where(name))

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to a copy of the manifest, save it atomically, then adopt it.

        Raises OSError with the in-memory manifest unchanged if saving fails.
        """
        manifest = (copy.deepcopy(self._manifest) if self._manifest is not None
                    else _empty_manifest(self.created))
        change(manifest)
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")
        temp, fd = self._create_unique(MANIFEST_TEMP_PREFIX, ".tmp")
        try:
            self._fill_and_place(fd, data, temp, MANIFEST_NAME)
        except BaseException:
            with suppress(OSError):
                os.unlink(temp, dir_fd=self._dirfd)
            raise
        with suppress(OSError):  # durability of the renames; some file systems refuse it
            os.fsync(self._dirfd)
        self._manifest = manifest
