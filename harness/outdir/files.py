"""Names and descriptor-level file helpers shared by every part of ``robench.outdir``.

Everything here works relative to a folder descriptor (``dir_fd``) and never follows a link
(``read_regular`` also takes a path, and follows a link there only when asked):
the bookkeeping names robench reserves in a results folder, the rule for a plain output name,
unique temporary names, small wrappers around ``os`` calls (full writes, hashing, stat), the
one way robench opens a file it reads (``open_regular_file``, ``read_regular``: regular files
only, never blocking; also for inputs outside a results folder), and opening, probing and
making folders with one-line errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robench.errors import UserError

LOCK_NAME = ".robench.lock"
MANIFEST_NAME = ".robench-manifest.json"
RESERVED_PREFIX = ".robench"  # every name starting with this is robench's bookkeeping
TEMP_PREFIX = ".robench-tmp-"
PROBE_PREFIX = ".robench-probe-"
MANIFEST_TEMP_PREFIX = ".robench-manifest-"
LOCKED_MESSAGE = "another robench run is writing this folder"

CLOEXEC = getattr(os, "O_CLOEXEC", 0)
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | CLOEXEC
# O_NOFOLLOW on a link fails with ELOOP (Linux, macOS) or EMLINK (FreeBSD).
LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
CHUNK = 1 << 20
ATTEMPTS = 16  # tries at a free unique name before giving up


def token() -> str:
    """A fresh name part: pid plus 64 random bits (tests monkeypatch this)."""
    return f"{os.getpid()}-{secrets.token_hex(8)}"


def unique_name(prefix: str, suffix: str = "") -> str:
    """``prefix`` + a fresh ``token()`` + ``suffix``; the one place temporary names are made."""
    return f"{prefix}{token()}{suffix}"


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` is one plain file name that is not robench's own."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name
            or (os.altsep is not None and os.altsep in name)):
        raise ValueError(f"not a plain file name: {name!r}")
    if name.startswith(RESERVED_PREFIX):
        raise ValueError(f"{name!r} is reserved for robench's bookkeeping")


def is_plain(name: Any) -> bool:
    """Whether ``check_name`` accepts ``name``."""
    try:
        check_name(name)
    except ValueError:
        return False
    return True


def why(err: OSError) -> str:
    """The short reason of an OSError for a one-line message."""
    return err.strerror or str(err)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (os.write may write fewer bytes than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def sha256_fd(fd: int, limit: int | None = None) -> str:
    """sha256 of the file behind ``fd`` from its start (of its first ``limit`` bytes)."""
    digest = hashlib.sha256()
    os.lseek(fd, 0, os.SEEK_SET)
    for chunk in read_chunks(fd, limit):
        digest.update(chunk)
    return digest.hexdigest()


def read_chunks(fd: int, limit: int | None = None) -> Iterator[bytes]:
    """The bytes of ``fd`` from its position in chunks, at most ``limit`` of them in all."""
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = os.read(fd, CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            return
        yield chunk
        if remaining is not None:
            remaining -= len(chunk)


def create_unique(prefix: str, suffix: str = "", *,
                  dir_fd: int | None = None) -> tuple[str, int]:
    """A new file with a random name, created exclusively (mode 0o666 less the umask) and
    without following links; (name, write descriptor)."""
    for _ in range(ATTEMPTS):
        name = unique_name(prefix, suffix)
        try:
            return name, os.open(name, CREATE_FLAGS, 0o666, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, f"no free temporary name starting {prefix!r}")


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    """The stat of ``name`` itself (a link is not followed); None if absent."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def lstat_quiet(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat``, with None for any error too."""
    try:
        return lstat(dir_fd, name)
    except OSError:
        return None


def is_regular(dir_fd: int, name: str) -> bool:
    """Whether ``name`` is a regular file itself (not a link to one)."""
    info = lstat(dir_fd, name)
    return info is not None and stat.S_ISREG(info.st_mode)


class NotRegularFile(OSError):
    """A name that is there but is not a regular file; ``kind`` says what it is ("a FIFO")."""

    def __init__(self, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file")
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file of this ``st_mode`` is, for a message ("a FIFO", "a folder", ...)."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular_file(path: str | os.PathLike[str], *, dir_fd: int | None = None,
                      follow_links: bool = False) -> int:
    """A read descriptor of the regular file ``path``: the one way robench opens a file it
    reads. The name is checked with a stat before it is opened (a FIFO, device, socket or
    folder is never opened: opening a FIFO blocks until a writer comes), opened with
    ``O_NONBLOCK`` (and ``O_NOFOLLOW`` unless ``follow_links``) and checked again with
    ``fstat`` (something swapped in between is refused, never waited on). Raises
    ``FileNotFoundError``, ``NotRegularFile``, or the ``OSError`` of the open."""
    info = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow_links)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(kind_of(info.st_mode))
    flags = READ_FLAGS if not follow_links else READ_FLAGS & ~os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in LINK_ERRNOS and not follow_links:
            raise NotRegularFile("a symbolic link") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between the stat and the open
            raise NotRegularFile(kind_of(mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str | os.PathLike[str], *, dir_fd: int | None = None,
                 where: str | None = None, follow_links: bool = False,
                 limit: int | None = None) -> bytes | None:
    """The bytes of the regular file ``path`` (``open_regular_file``; at most ``limit``
    bytes), None if nothing is there; a one-line ``UserError`` naming ``where`` (default: the
    path) for a link (unless ``follow_links``), a FIFO, a device, a socket, a folder or a read
    error. Never blocks on what it opens."""
    where = where or os.fspath(path)
    try:
        fd = open_regular_file(path, dir_fd=dir_fd, follow_links=follow_links)
    except FileNotFoundError:
        return None
    except NotRegularFile as err:
        raise UserError(f"is {err.kind}; robench reads only regular files here"
                        + ("" if follow_links else " (a link is not followed)"),
                        where=where) from None
    except OSError as err:
        raise UserError(f"cannot read ({why(err)})", where=where) from None
    try:
        return b"".join(read_chunks(fd, limit))
    except OSError as err:
        raise UserError(f"cannot read ({why(err)})", where=where) from None
    finally:
        os.close(fd)


def open_regular(dir_fd: int, name: str) -> int | None:
    """A read descriptor for ``name`` if it is a regular file reached without a link (None
    for anything else: ``open_regular_file`` without the reasons)."""
    try:
        return open_regular_file(name, dir_fd=dir_fd)
    except OSError:
        return None


def fingerprint(dir_fd: int, name: str) -> tuple[int, int, int, str] | None:
    """(st_dev, st_ino, size, sha256) of ``name`` if it is a regular file, not a link."""
    fd = open_regular(dir_fd, name)
    if fd is None:
        return None
    try:
        info = os.fstat(fd)
        return info.st_dev, info.st_ino, info.st_size, sha256_fd(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


# -- the folder itself (each raises a one-line UserError naming ``where``) ----------------------
def open_folder(path: Path) -> int:
    """A descriptor of the results folder ``path`` (a link to a folder is accepted)."""
    where = str(path)
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | CLOEXEC)
    except OSError as err:
        if os.path.islink(path):
            raise UserError("is a symbolic link to something that is not a folder; "
                            "choose another --out", where=where) from None
        if isinstance(err, FileNotFoundError):
            raise UserError("results folder does not exist", where=where) from None
        if isinstance(err, NotADirectoryError):
            raise UserError("is not a folder; choose another --out", where=where) from None
        raise UserError(f"cannot open the results folder ({why(err)})", where=where) from None


def probe_writable(dir_fd: int, where: str) -> None:
    """Prove the folder is writable with a unique, exclusively created file."""
    try:
        name, fd = create_unique(PROBE_PREFIX, dir_fd=dir_fd)
        try:
            write_all(fd, b"ok\n")
        finally:
            os.close(fd)
            os.unlink(name, dir_fd=dir_fd)
    except OSError as err:
        raise UserError(f"results folder is not writable ({why(err)})", where=where) from None


def make_fresh_dir(dir_fd: int, base: str, where: str) -> tuple[str, int]:
    """Create sub-folder ``base`` (``base-2`` ... if taken); (its name, a descriptor of it)."""
    for attempt in range(1, ATTEMPTS + 1):
        folder = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(folder, 0o777, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"could not create {folder}/ ({why(err)})", where=where) from None
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | CLOEXEC,
                         dir_fd=dir_fd)
        except OSError as err:
            raise UserError(f"could not open {folder}/ ({why(err)})", where=where) from None
        return folder, fd
    raise UserError(f"too many {base}* folders", where=where)
