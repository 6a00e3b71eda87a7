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

The parts, each usable alone: ``files`` (the reserved names, descriptor-level helpers),
``atomic`` (the one temp + fsync + rename primitive, also ``atomic_write_text`` for a file
outside any results folder), ``lock`` (one run per folder), ``manifest`` (ownership records
and recovery), ``log`` (append-only logs), ``paths`` (a user's ``--out`` resolved before
any check), ``folder`` (``OutputFolder``, composing them) and ``verify`` (``RunFiles``: how
readers read a folder's files, as the manifest vouches for them).

Platform: POSIX only (Linux, macOS): needs ``fcntl.flock``, ``O_NOFOLLOW`` and ``dir_fd``
support. An ``OutputFolder`` is meant for one run in one thread; it is not thread-safe. A
forked child inherits the lock descriptor and keeps the lock while it lives.
"""

from robench.outdir.atomic import atomic_write_text
from robench.outdir.files import LOCK_NAME, LOCKED_MESSAGE, MANIFEST_NAME
from robench.outdir.folder import OutputFolder
from robench.outdir.paths import resolve_out, results_folder_holding
from robench.outdir.verify import RunFiles, UnverifiedWarning, check_whole_csv

__all__ = ["LOCK_NAME", "LOCKED_MESSAGE", "MANIFEST_NAME", "OutputFolder", "RunFiles",
           "UnverifiedWarning", "atomic_write_text", "check_whole_csv", "resolve_out",
           "results_folder_holding"]
