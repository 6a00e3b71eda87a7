"""The ownership manifest: what robench wrote in a results folder, and recovery after a crash.

``.robench-manifest.json`` lists every file robench wrote in the folder (``files``: name ->
kind, size, sha256; a write in progress adds a ``pending`` version), the temporary files a run
may leave (``temps``) and the files set aside (``previous``). A file is robench's only while its
content matches its entry (a log: while its recorded prefix does). Every change is saved
atomically (``robench.outdir.atomic``) before the in-memory copy adopts it, and ``recover``
settles what an interrupted run left. See ``robench.outdir`` for the whole contract.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from robench.errors import UserError
from robench.outdir.atomic import write_replace
from robench.outdir.files import (
    MANIFEST_NAME,
    MANIFEST_TEMP_PREFIX,
    TEMP_PREFIX,
    is_plain,
    is_regular,
    open_regular,
    read_regular,
    sha256_fd,
    why,
)

__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "Manifest", "empty_manifest", "put", "vouched"]

MANIFEST_FORMAT = "robench-output-manifest"
MANIFEST_VERSION = 1

Entry = dict[str, Any]


def empty_manifest(created: bool) -> dict[str, Any]:
    """A manifest that lists nothing; ``created``: whether robench made the folder."""
    return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
            "folder_created_by_robench": created, "files": {}, "temps": [], "previous": {}}


def put(manifest: dict[str, Any], name: str, entry: Entry | None) -> None:
    """Set (or with None remove) the entry of ``name`` in a manifest dict."""
    if entry is None:
        manifest["files"].pop(name, None)
    else:
        manifest["files"][name] = entry


def vouched(entry: Entry, length: int, sha256_of: Callable[[int], str]
            ) -> tuple[int, str] | None:
    """The (size, sha256) by which ``entry`` vouches for a content of ``length`` bytes whose
    first n bytes hash to ``sha256_of(n)``: a file's whole content (its recorded version, or
    the pending one of a write a kill interrupted), a log's recorded prefix (lines appended
    after it are not vouched for); None when no version matches. The one rule both the
    ownership of a file and a reader's check of what it read follow."""
    versions = [entry]
    if isinstance(entry.get("pending"), dict):
        versions.insert(0, {"kind": "file", **entry["pending"]})
    for version in versions:
        size, digest, kind = version.get("size"), version.get("sha256"), version.get("kind")
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(digest, str):
            continue
        if ((kind == "file" and length == size) or (kind == "log" and length >= size)) \
                and sha256_of(size) == digest:
            return size, digest
    return None


#: the names robench appends to (``robench.outdir.log``), the only ones a "log" entry may name
LOG_SUFFIX = ".log"


class Manifest:
    """The manifest of the folder behind ``dir_fd``: ``data`` is None while there is none."""

    def __init__(self, dir_fd: int, path: Path, created: bool) -> None:
        self._dir_fd = dir_fd
        self._path = path
        self._created = created
        self.data: dict[str, Any] | None = None

    @property
    def exists(self) -> bool:
        """Whether the folder holds a manifest (read, or written by this run)."""
        return self.data is not None

    def load(self) -> None:
        """Read the folder's manifest (none is fine); UserError if it is a link or damaged."""
        where = str(self._path / MANIFEST_NAME)
        raw = read_regular(MANIFEST_NAME, dir_fd=self._dir_fd, where=where)
        if raw is None:
            self.data = None
            return
        try:
            data = json.loads(raw.decode("utf-8"))
            valid = (isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT
                     and data.get("version") == MANIFEST_VERSION
                     and isinstance(data.get("files"), dict)
                     # only a log may be vouched for by its prefix: an entry that calls a
                     # table a "log" would let rows appended to it pass
                     and all(name.endswith(LOG_SUFFIX) for name, e in data["files"].items()
                             if isinstance(e, dict) and e.get("kind") == "log"))
        except (ValueError, RecursionError):  # RecursionError: JSON nested too deeply
            valid = False
        if not valid:
            raise UserError("ownership manifest is damaged or from another version; move it "
                            "away (robench then treats every file here as foreign)", where=where)
        data.setdefault("folder_created_by_robench", False)
        if not isinstance(data.get("temps"), list):
            data["temps"] = []
        if not isinstance(data.get("previous"), dict):
            data["previous"] = {}
        self.data = data

    # -- reading ----------------------------------------------------------------------------
    def entry(self, name: str) -> Entry | None:
        """A copy of the entry of ``name``; None if there is none (or no manifest)."""
        if self.data is None:
            return None
        entry = self.data["files"].get(name)
        return copy.deepcopy(entry) if isinstance(entry, dict) else None

    def owns(self, name: str) -> bool:
        """True only if ``name`` is a regular file (not a link) whose content matches what
        robench recorded when it wrote it (either version of a pending write)."""
        entry = self.entry(name)
        return entry is not None and self.matches(name, entry)

    def matches(self, name: str, entry: Entry) -> bool:
        """Whether the file ``name`` holds what ``entry`` records (``vouched``)."""
        fd = open_regular(self._dir_fd, name)
        if fd is None:
            return False
        try:
            return vouched(entry, os.fstat(fd).st_size,
                           lambda size: sha256_fd(fd, size)) is not None
        except OSError:
            return False
        finally:
            os.close(fd)

    # -- changing (each raises OSError with the manifest unchanged if saving fails) ----------
    def update(self, change: Callable[[dict[str, Any]], None]) -> None:
        """Apply ``change`` to a copy of the manifest, save it atomically, then adopt it."""
        manifest = (copy.deepcopy(self.data) if self.data is not None
                    else empty_manifest(self._created))
        change(manifest)
        data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")
        write_replace(MANIFEST_NAME, data, prefix=MANIFEST_TEMP_PREFIX, suffix=".tmp",
                      dir_fd=self._dir_fd)
        with suppress(OSError):  # durability of the renames; some file systems refuse it
            os.fsync(self._dir_fd)
        self.data = manifest

    def set_entry(self, name: str, entry: Entry | None) -> None:
        """Record (or with None drop) the entry of ``name``."""
        self.update(lambda m: put(m, name, entry))

    def add_temp(self, temp: str, name: str, pending: tuple[int, str] | None,
                 previous: Entry | None) -> None:
        """Record ``temp`` before it is created; with ``pending`` (size, sha256) also record the
        new version of ``name`` as pending next to ``previous`` (which stays valid)."""
        def record(m: dict[str, Any]) -> None:
            m["temps"].append(temp)
            if pending is not None:
                new = {"size": pending[0], "sha256": pending[1]}
                put(m, name, {**(previous or {"kind": "file", **new}), "pending": new})

        self.update(record)

    def drop_temp(self, temp: str) -> None:
        """Forget a recorded temp file that was never created."""
        self.update(lambda m: m["temps"].remove(temp))

    def add_pending(self, name: str, previous: Entry | None, size: int, digest: str) -> None:
        """Record the (size, sha256) about to be renamed to ``name`` as pending."""
        new = {"size": size, "sha256": digest}
        self.set_entry(name, {**(previous or {"kind": "file", **new}), "pending": new})

    def undo(self, temp: str | None, name: str | None, previous: Entry | None) -> None:
        """Best effort after a failed write: unlist ``temp``, restore the entry of ``name``."""
        if self.data is None:
            return
        listed = temp is not None and temp in self.data["temps"]
        changed = name is not None and self.entry(name) != previous
        if listed or changed:
            def apply(m: dict[str, Any]) -> None:
                if listed:
                    m["temps"].remove(temp)
                if changed:
                    assert name is not None  # `changed` implies a name
                    put(m, name, previous)

            with suppress(OSError):
                self.update(apply)

    def finish(self, name: str, temp: str, size: int, digest: str) -> None:
        """After the rename: make the pending entry final (the file is already in place)."""
        def apply(m: dict[str, Any]) -> None:
            if temp in m["temps"]:
                m["temps"].remove(temp)
            m["files"][name] = {"kind": "file", "size": size, "sha256": digest}

        self.update(apply)

    def set_aside(self, folder: str, moved: dict[str, Any]) -> None:
        """Move the entries of the files now in ``folder``/ to ``previous``."""
        def apply(m: dict[str, Any]) -> None:
            for name in moved:
                m["files"].pop(name, None)
            m["previous"][folder] = moved

        self.update(apply)

    # -- recovery ---------------------------------------------------------------------------
    def recover(self) -> None:
        """After an interrupted run: remove the temp files its manifest names and the manifest
        temp files it left (a kill between creating and renaming one), settle entries."""
        if self.data is None:
            return
        self._drop_manifest_temps()
        temps = [t for t in self.data["temps"]
                 if isinstance(t, str) and t.startswith(TEMP_PREFIX) and "/" not in t]
        pending = [n for n, e in self.data["files"].items()
                   if is_plain(n) and isinstance(e, dict) and "pending" in e]
        if not self.data["temps"] and not pending:
            return
        try:
            for temp in temps:
                if is_regular(self._dir_fd, temp):
                    with suppress(FileNotFoundError):
                        os.unlink(temp, dir_fd=self._dir_fd)
            settled = {name: self._settle(name, self.data["files"][name]) for name in pending}

            def apply(m: dict[str, Any]) -> None:
                m["temps"] = []
                m["files"].update(settled)

            self.update(apply)
        except OSError as err:
            raise UserError(f"could not tidy up after an interrupted run ({why(err)})",
                            where=str(self._path)) from None

    def _drop_manifest_temps(self) -> None:
        """Remove ``.robench-manifest-<pid>-<16 hex>.tmp`` plain files: only robench makes names
        with its reserved prefix, and only the run holding the lock writes the manifest."""
        pattern = re.compile(re.escape(MANIFEST_TEMP_PREFIX) + r"\d+-[0-9a-f]{16}\.tmp")
        for name in os.listdir(self._dir_fd):
            if pattern.fullmatch(name) and is_regular(self._dir_fd, name):
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dir_fd)

    def _settle(self, name: str, entry: Entry) -> Entry:
        """A pending entry becomes the new version if the file holds it, else the old one."""
        rest = {k: v for k, v in entry.items() if k != "pending"}
        new = entry.get("pending")
        if isinstance(new, dict) and self.matches(name, {"kind": "file", **new}):
            return {"kind": "file", "size": new.get("size"), "sha256": new.get("sha256")}
        return rest
