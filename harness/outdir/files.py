"""Names and descriptor-level file helpers shared by every part of ``robench.outdir``.

Everything here works relative to a folder descriptor (``dir_fd``) and never follows a link:
the bookkeeping names robench reserves in a results folder, the rule for a plain output name,
unique temporary names, small wrappers around ``os`` calls (full writes, hashing, stat), and
opening, probing and making folders with one-line errors.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
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
    remaining = limit
    while remaining is None or remaining > 0:
        chunk = os.read(fd, CHUNK if remaining is None else min(CHUNK, remaining))
        if not chunk:
            break
        digest.update(chunk)
        if remaining is not None:
            remaining -= len(chunk)
    return digest.hexdigest()


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


def open_regular(dir_fd: int, name: str) -> int | None:
    """A read descriptor for ``name`` if it is a regular file reached without a link."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
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
