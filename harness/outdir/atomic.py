"""The one atomic-write primitive of robench: temp file, fsync, rename.

A new version of a file is written to a unique, exclusively created temporary file in the same
folder (mode 0o666 less the umask, never following a link), fsynced, closed and renamed over
the old name, so a reader or a crash sees the old file or the new one, never a torn one; the
rename replaces a name, never the target of a link. ``OutputFolder`` writes its outputs and its
manifest this way (relative to a folder descriptor); ``atomic_write_text`` writes a file the
user named outside any results folder (``robench compare --out``).
"""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from robench.errors import UserError
from robench.outdir.files import create_unique, write_all
from robench.outdir.paths import resolve_out, results_folder_holding

__all__ = ["atomic_write_text", "place", "write_replace"]


def place(fd: int, data: bytes, temp: str, name: str, *, dir_fd: int | None = None) -> None:
    """Write ``data`` to the open temp file, fsync and close it, then rename it to ``name``.

    The caller removes ``temp`` if this raises (it may have to record that first).
    """
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_replace(name: str, data: bytes, *, prefix: str, suffix: str = "",
                  dir_fd: int | None = None) -> None:
    """Atomically replace ``name`` with ``data`` through a new temp file ``prefix…suffix``;
    on any error the temp file is removed and the error raised, ``name`` stays as it was."""
    temp, fd = create_unique(prefix, suffix, dir_fd=dir_fd)
    try:
        place(fd, data, temp, name, dir_fd=dir_fd)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write a new file the user named (``compare --out``): never over an existing file or link,
    never into a robench results folder (nor any folder below one); temp file (with the umask's
    mode) + fsync + rename. ``path`` is resolved first (``resolve_out``: its folder's links and
    ``..``), so a detour through a folder that does not exist yet cannot reach a results folder.
    """
    target = resolve_out(path)
    shown = str(path) if str(path) == str(target) else f"{path} (= {target})"
    if os.path.lexists(target):
        raise UserError("exists; choose a new file name (robench does not overwrite it)",
                        where=shown)
    results = results_folder_holding(target)
    if results is not None:
        raise UserError(f"is inside the robench results folder {results}; write the "
                        "comparison elsewhere", where=shown)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        write_replace(target.name, text.encode("utf-8"), prefix=f".{target.name}.",
                      suffix=".tmp", dir_fd=folder)
    finally:
        os.close(folder)
