"""Reading a results folder's files as robench wrote them, or not at all.

``RunFiles.of(path)`` is how every reader of a results folder (``robench leaderboard``,
``report``, ``compare`` and the finalize step of ``run``) gets the bytes of the files it parses:

* **Only regular files are read.** A name is checked with ``lstat`` before it is opened (a
  FIFO, device, socket or folder is never opened: opening a FIFO blocks until a writer comes),
  then opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat``; a link or
  anything that is not a regular file is refused in one line. The process never blocks on a
  read and stays interruptible.
* **The bytes parsed are the bytes checked.** A file is read once into memory, checked against
  the folder's manifest (``.robench-manifest.json``: size and sha256 of every file robench
  wrote, see ``robench.outdir.manifest``) and parsed from that copy, so no one can swap the
  file between the check and the parse.
* **A run folder is read only as robench wrote it.** A folder whose manifest lists
  ``results.csv`` is a run's folder: there a file whose size or sha256 differs from its entry
  (either version of a pending write) is refused as edited or damaged, a file the manifest does
  not list is refused as not robench's, and a listed file that is gone is refused as missing
  (its absence would change what is shown: checks vanish without ``diagnostics.json``), except
  ``run.log`` (a log is not kept in git). A log is checked as robench's logs are owned: its
  recorded prefix must be unchanged, lines appended after it are read.
* **Anything else is unverified, and says so.** A folder without a manifest, or whose manifest
  does not list ``results.csv`` (a copied results.csv whose leaderboard robench wrote beside
  it), is read with one ``UnverifiedWarning`` per folder (``warn``, once what was read has
  parsed: a damaged file is one error line, not a warning and an error), and ``note`` is the
  mark a reader puts on its output. Files listed there are still checked.

Refusing rather than warning for a run folder: an edited or damaged file's numbers shown next
to robench's, even with a warning, are what a reader copies into a paper; a line that names
the file is the one thing that cannot be misread. A torn or truncated file is never a smaller
table (``check_whole_csv``). Like the manifest, this catches accidents and edits, not someone
who rewrites the manifest too.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import stat
import warnings
from pathlib import Path

from robench.errors import UserError
from robench.outdir.files import CHUNK, LINK_ERRNOS, READ_FLAGS, open_folder, why
from robench.outdir.manifest import Entry, Manifest
from robench.run_files import RESULTS_FILE

__all__ = ["DIFFERS", "RunFiles", "UnverifiedWarning", "check_whole_csv", "read_regular"]

#: what every refusal of an edited or damaged file says
DIFFERS = "differs from what robench wrote"
#: listed files a run folder may lack (run.log is not committed with the results)
MAY_BE_ABSENT = frozenset({"run.log"})


class UnverifiedWarning(UserWarning):
    """A results folder read without a manifest that vouches for its files."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular(path: Path) -> bytes | None:
    """The bytes of the regular file ``path`` (None if nothing is there); one-line
    ``UserError`` for a link, a FIFO, a device, a socket, a folder or a read error. Never
    opens anything that could block."""
    where = str(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UserError(f"cannot read ({why(err)})", where=where) from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"is {_kind(info.st_mode)}; robench reads only regular files here "
                        "(a link is not followed)", where=where)
    try:
        fd = os.open(path, READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno in LINK_ERRNOS:
            raise UserError("is a symbolic link; robench reads only regular files here "
                            "(a link is not followed)", where=where) from None
        raise UserError(f"cannot read ({why(err)})", where=where) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):  # replaced between lstat and open
            raise UserError(f"is {_kind(mode)}; robench reads only regular files here",
                            where=where)
        chunks = []
        while chunk := os.read(fd, CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise UserError(f"cannot read ({why(err)})", where=where) from None
    finally:
        os.close(fd)


def _matches(data: bytes, entry: Entry) -> bool:
    """Whether ``data`` is what ``entry`` records (a log: as its prefix), or its pending
    version (a run killed between writing and recording)."""
    versions = [entry]
    if isinstance(entry.get("pending"), dict):
        versions.append({"kind": "file", **entry["pending"]})
    for version in versions:
        size, digest, kind = version.get("size"), version.get("sha256"), version.get("kind")
        if not isinstance(size, int) or not isinstance(digest, str):
            continue
        if kind == "file" and len(data) == size and hashlib.sha256(data).hexdigest() == digest:
            return True
        if (kind == "log" and len(data) >= size
                and hashlib.sha256(data[:size]).hexdigest() == digest):
            return True
    return False


class RunFiles:
    """The files of one results folder, read as robench wrote them (see the module)."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self._manifest = manifest
        #: a run's folder: its manifest lists results.csv, and vouches for every file read
        self.verified = manifest.entry(RESULTS_FILE) is not None
        self._warned = False

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> RunFiles:
        """The folder of ``path`` (a results folder, or a file in one) and its manifest."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        fd = open_folder(folder)
        try:
            manifest = Manifest(fd, folder, created=False)
            manifest.load()
        finally:
            os.close(fd)
        return cls(folder, manifest)

    @property
    def note(self) -> str | None:
        """The mark for output made from these files: None when the folder is verified."""
        if self.verified:
            return None
        if not self._manifest.exists:
            return f"unverified: no robench manifest in {self.folder}"
        return f"unverified: robench's manifest in {self.folder} does not list {RESULTS_FILE}"

    def read(self, name: str, *, may_be_absent: bool = False) -> bytes | None:
        """The bytes of the file ``name`` of this folder (None when it is absent and may be:
        ``may_be_absent``, e.g. cells ``robench plan`` then counts as to do); one-line
        ``UserError`` when it is not a regular file, was edited or damaged, is not robench's in
        a run's folder, or is a file robench wrote there that is gone."""
        where = str(self.folder / name)
        entry = self._manifest.entry(name)
        data = read_regular(self.folder / name)
        if data is None:
            if (self.verified and entry is not None and not may_be_absent
                    and name not in MAY_BE_ABSENT):
                raise UserError("missing: robench wrote it in this run's folder (its manifest "
                                "lists it); restore it or run the suite again", where=where)
            return None
        if entry is not None:
            if not _matches(data, entry):
                raise UserError(f"{DIFFERS} (its size or sha256 is not the one in "
                                ".robench-manifest.json: edited or damaged); not read",
                                where=where)
        elif self.verified:
            raise UserError("not written by robench (not in this run folder's manifest); "
                            "move it away", where=where)
        return data

    def listed(self) -> list[str]:
        """The names the folder's manifest lists as files robench wrote (sorted; none without
        a manifest), present or not: a reader finds there the files that went missing."""
        data = self._manifest.data
        return sorted(data["files"]) if data is not None else []

    def warn(self) -> None:
        """One ``UnverifiedWarning`` for this folder if it is not verified (later calls: none);
        a reader calls it once its files have parsed."""
        if self.note is not None and not self._warned:
            self._warned = True
            warnings.warn(f"{self.note}; its numbers are shown as found", UnverifiedWarning,
                          stacklevel=2)


def check_whole_csv(data: bytes, where: str) -> str:
    """The text of a CSV file that is whole: UTF-8, ending with a line break, every record
    with as many fields as the header (pandas reads a torn last line as a shorter row, or a
    cut number as a smaller one). One-line ``UserError`` otherwise."""
    try:
        text = codecs.decode(data, "utf-8")
    except UnicodeDecodeError:
        raise UserError("not UTF-8 text: damaged", where=where) from None
    if not text:
        return text
    if not text.endswith("\n"):
        raise UserError("torn or truncated: its last line has no line break (damaged)",
                        where=where)
    try:
        records = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(records, [])
        for number, record in enumerate(records, start=2):
            if record and len(record) != len(header):
                raise UserError(f"torn or truncated: record {number} has {len(record)} fields, "
                                f"the header {len(header)} (damaged)", where=where)
    except csv.Error as err:
        raise UserError(f"torn or truncated: {err} (damaged)", where=where) from None
    return text
