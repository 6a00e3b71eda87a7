"""Paths the user names on the command line, resolved once before anything looks at them.

A path such as ``RESULTS/newsub/../results.csv`` means ``RESULTS/results.csv`` to the kernel only
once ``newsub/`` exists; a check made before (``does it exist?``, ``is its folder a results
folder?``) sees a path that does not resolve and lets it pass. A plugin that changes the working
folder while it is imported would move every relative path. So the CLI turns every ``--out``
into an absolute path with its folder's links and ``..`` resolved, relative to the folder
robench was started in, before a guard or a plugin runs. The last part of the path is kept as
named: a link there is the caller's to refuse (a results folder that is a link to a folder is
accepted; ``compare --out`` never writes through one).
"""

from __future__ import annotations

import os
from pathlib import Path

from robench.errors import UserError
from robench.outdir.files import MANIFEST_NAME

__all__ = ["resolve_out", "results_folder_holding"]


def resolve_out(path: str | os.PathLike[str], where: str = "--out") -> Path:
    """``path`` made absolute against the current folder, every link and ``..`` in its folder
    resolved (also through folders that do not exist yet); its last part kept as named unless
    it is ``.`` or ``..``. An empty name is a ``UserError``."""
    text = os.fspath(path)
    if not text.strip():
        raise UserError("empty path", where=where)
    absolute = Path(os.getcwd(), text)  # an absolute ``text`` replaces the current folder
    if absolute.name in ("", ".", ".."):  # 'x/..' and '/' name a folder: resolve it whole
        return Path(os.path.realpath(absolute))
    # os.path.realpath, not Path.resolve: the same in every Python, non-strict
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def results_folder_holding(path: Path) -> Path | None:
    """The nearest folder from ``path``'s folder upwards that is a robench results folder (holds
    a manifest), or None. ``path`` must be resolved (``resolve_out``)."""
    for folder in path.parents:
        if os.path.lexists(folder / MANIFEST_NAME):
            return folder
    return None
