"""Reading a results folder's files as robench wrote them, or not at all.

``RunFiles.of(path)`` is how every reader of a results folder (``robench leaderboard``,
``report``, ``compare`` and the finalize step of ``run``) gets the bytes of the files it parses:

* **Only regular files are read.** ``robench.outdir.files.read_regular`` checks a name with
  ``lstat`` before it is opened (a FIFO, device, socket or folder is never opened: opening a
  FIFO blocks until a writer comes), opens it with ``O_NOFOLLOW | O_NONBLOCK`` and checks it
  again with ``fstat``; a link or anything that is not a regular file is refused in one line.
  The process never blocks on a read and stays interruptible.
* **The bytes parsed are the bytes checked.** A file is read once into memory, checked against
  the folder's manifest (``.robench-manifest.json``: size and sha256 of every file robench
  wrote, see ``robench.outdir.manifest``) and parsed from that copy, so no one can swap the
  file between the check and the parse. Of a log, only the prefix the manifest records is
  returned: lines appended after it (by hand, or forged) are never parsed.
* **A run folder is read only as robench wrote it.** A folder whose manifest lists
  ``results.csv`` is a run's folder: there a file whose size or sha256 differs from its entry
  (either version of a pending write) is refused as edited or damaged, a file the manifest does
  not list is refused as not robench's, and a listed file that is gone is refused as missing
  (its absence would change what is shown: checks vanish without ``diagnostics.json``), except
  ``run.log`` (a log is not kept in git).
* **A run's files without their manifest are not read at all.** A folder that holds
  ``run.json`` or ``outcomes.parquet`` (files only a run writes) beside ``results.csv`` but no
  manifest, or a manifest that does not list ``results.csv``, is refused in one line:
  deleting the manifest must not turn a forgery into a warning.
* **Anything else is unverified, and says so.** A bare ``results.csv`` (a copy, perhaps with
  the leaderboard robench wrote beside it) is read with one ``UnverifiedWarning`` per folder
  (``warn``, once every guard of the command passed: a refusal is the only line), and
  ``note`` is the mark a reader puts on its output. Files listed there are still checked.
* **A folder a run is writing is named as such.** A run's manifest can lag a file it has just
  renamed; when a check fails while another process holds the folder's lock (a shared,
  non-blocking flock test, ``robench.outdir.lock.held_elsewhere``), the reader says that a
  run is writing the folder instead of calling the file edited. A command that writes into
  the folder it read calls ``check_unchanged`` once it holds the lock: a run that finished in
  between is never overwritten with older outputs.

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
import warnings
from pathlib import Path

from robench.errors import UserError
from robench.outdir.files import MANIFEST_NAME, open_folder, read_regular
from robench.outdir.lock import held_elsewhere
from robench.outdir.manifest import Entry, Manifest, vouched
from robench.run_files import OUTCOMES_FILE, RESULTS_FILE

__all__ = ["DIFFERS", "RunFiles", "UnverifiedWarning", "check_whole_csv", "read_regular",
           "warn_unverified"]

#: what every refusal of an edited or damaged file says
DIFFERS = "differs from what robench wrote"
#: what a reader says instead when a robench run holds the folder's lock (its manifest may
#: lag behind a file it has just put in place)
WRITING = "a robench run is writing this folder; run the command again when it ends"
#: listed files a run folder may lack (run.log is not committed with the results)
MAY_BE_ABSENT = frozenset({"run.log"})
#: files only a robench run writes: beside results.csv, they make a folder a run's folder,
#: which is read only as its manifest vouches for it
RUN_ONLY = ("run.json", OUTCOMES_FILE)


class UnverifiedWarning(UserWarning):
    """A results folder read without a manifest that vouches for its files."""


def warn_unverified(note: str | None) -> None:
    """The one warning line for output made from a folder no manifest vouches for (``note``:
    ``RunFiles.note``; None: nothing to say). A command gives it once every guard passed, so
    that a refusal is the only line it prints."""
    if note is not None:
        warnings.warn(f"{note}; its numbers are shown as found", UnverifiedWarning,
                      stacklevel=2)


def _versions(entry: Entry | None) -> set[tuple[object, object]]:
    """The (size, sha256) pairs an entry records: its version and a pending one."""
    if entry is None:
        return set()
    pending = entry.get("pending")
    return {(entry.get("size"), entry.get("sha256"))} | (
        {(pending.get("size"), pending.get("sha256"))} if isinstance(pending, dict) else set())


class RunFiles:
    """The files of one results folder, read as robench wrote them (see the module)."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self._manifest = manifest
        #: a run's folder: its manifest lists results.csv, and vouches for every file read
        self.verified = manifest.entry(RESULTS_FILE) is not None
        #: robench run files in a folder no manifest vouches for: nothing there is read
        #: unverified (a forgery would only need to delete the manifest)
        self._orphans = [] if self.verified or not os.path.lexists(folder / RESULTS_FILE) \
            else [name for name in RUN_ONLY if os.path.lexists(folder / name)]
        #: what each file read was verified as: (size, sha256), "absent" with its entry then,
        #: or None (no entry); ``check_unchanged`` compares the manifest with it
        self._seen: dict[str, tuple[int, str] | tuple[str, Entry | None] | None] = {}
        self._warned = False

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> RunFiles:
        """The folder of ``path`` (a results folder, or a file in one) and its manifest."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        return cls(folder, _load_manifest(folder))

    @property
    def note(self) -> str | None:
        """The mark for output made from these files: None when the folder is verified."""
        if self.verified:
            return None
        if not self._manifest.exists:
            return f"unverified: no robench manifest in {self.folder}"
        return f"unverified: robench's manifest in {self.folder} does not list {RESULTS_FILE}"

    def read(self, name: str, *, may_be_absent: bool = False) -> bytes | None:
        """The bytes of the file ``name`` of this folder as its manifest vouches for them (a
        log: its recorded prefix, never lines appended after it), None when it is absent and
        may be (``may_be_absent``, e.g. cells ``robench plan`` then counts as to do); one-line
        ``UserError`` when it is not a regular file, was edited or damaged, is not robench's
        in a run's folder, is a file robench wrote there that is gone, or sits beside a run's
        files no manifest vouches for (see the module)."""
        where = str(self.folder / name)
        entry = self._manifest.entry(name)
        # never more than the manifest vouches for (a file one byte more, to see it grew): a
        # file swollen to gigabytes is refused without being read whole
        data = read_regular(self.folder / name, limit=_read_limit(entry))
        if data is None:
            self._seen[name] = ("absent", entry)
            if (self.verified and entry is not None and not may_be_absent
                    and name not in MAY_BE_ABSENT):
                self._refuse("missing: robench wrote it in this run's folder (its manifest "
                             "lists it); restore it, or recompute it with robench run SUITE "
                             "--out FOLDER --update", where)
            return None
        if entry is None:
            if self.verified:
                self._refuse("not written by robench (not in this run folder's manifest); "
                             "move it away", where)
            if self._orphans:
                why = ("its manifest does not list " + RESULTS_FILE if self._manifest.exists
                       else MANIFEST_NAME + " is missing")
                self._refuse(f"holds a robench run's files ({', '.join(self._orphans)}) but "
                             f"no manifest vouches for them ({why}): cannot verify {name}; "
                             f"restore the folder's {MANIFEST_NAME} or run the suite again",
                             str(self.folder))
            self._seen[name] = None
            return data
        view = memoryview(data)
        match = vouched(entry, len(data), lambda size: hashlib.sha256(view[:size]).hexdigest())
        if match is None:
            self._refuse(f"{DIFFERS} (its size or sha256 is not the one in "
                         ".robench-manifest.json: edited or damaged); not read", where)
        assert match is not None  # _refuse raises
        self._seen[name] = match
        return data[:match[0]]  # a log: only the prefix the manifest vouches for

    def listed(self) -> list[str]:
        """The names the folder's manifest lists as files robench wrote (sorted; none without
        a manifest), present or not: a reader finds there the files that went missing."""
        data = self._manifest.data
        return sorted(data["files"]) if data is not None else []

    def check_unchanged(self) -> None:
        """Refuse (one line) if the folder's manifest no longer vouches for what was read:
        a run wrote the folder since (a caller that writes there calls this once it holds
        the folder's lock, so it never replaces a newer run's outputs with older ones)."""
        now = _load_manifest(self.folder)
        for name, seen in self._seen.items():
            entry = now.entry(name)
            same = (entry is None if seen is None
                    else entry == seen[1] if seen[0] == "absent"
                    else seen in _versions(entry))
            if not same:
                raise UserError("changed while being read (a run was writing this folder?); "
                                "run the command again", where=str(self.folder))

    def warn(self) -> None:
        """One ``UnverifiedWarning`` for this folder if it is not verified (later calls: none);
        a reader calls it once its files have parsed and every guard passed."""
        if self.note is not None and not self._warned:
            self._warned = True
            warn_unverified(self.note)

    def _refuse(self, message: str, where: str) -> None:
        """Raise ``message`` about ``where``; or, while another process holds the folder's
        lock, that a run is writing it (its manifest may lag a file it has just renamed: not
        an edit)."""
        try:
            fd = open_folder(self.folder)
        except UserError:
            raise UserError(message, where=where) from None
        try:
            writing = held_elsewhere(fd)
        finally:
            os.close(fd)
        raise UserError(WRITING if writing else message,
                        where=str(self.folder) if writing else where)


def _load_manifest(folder: Path) -> Manifest:
    fd = open_folder(folder)
    try:
        manifest = Manifest(fd, folder, created=False)
        manifest.load()
    finally:
        os.close(fd)
    return manifest


def _read_limit(entry: Entry | None) -> int | None:
    """How many bytes of a file to read for ``entry``: a log's recorded prefix, a file's
    largest recorded size plus one; no limit without an entry (read, then refused or parsed)."""
    if entry is None:
        return None
    versions = [entry, *([entry["pending"]] if isinstance(entry.get("pending"), dict) else [])]
    sizes = [v.get("size") for v in versions]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in sizes):
        return None
    return max(sizes) + (0 if entry.get("kind") == "log" and len(versions) == 1 else 1)


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
