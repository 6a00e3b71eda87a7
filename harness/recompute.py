"""``robench run SUITE --recompute``: train and attack from scratch into a new folder, never
touching the existing one, and compare the two at the end.

From scratch: the new run is a ``--force`` run, so it neither reads nor writes the model cache
(``robench.runner.Runner``: ``ModelCache(enabled=False)``) and reuses no stored cell; its folder
is new or empty, so there is nothing to resume. The existing folder (``--out``, default
``results/<suite name>``) is only read, at the end, by the comparison. The new folder is
``<existing>-recompute-<UTC time>`` unless ``--recompute-into`` names one; a folder that exists
and is not empty is refused before anything is computed (one line, exit 2).

The comparison line: how many of the cells both runs hold are bit-identical (the same
per-image outcomes, image by image, and the same robust accuracy), how many differ and the
largest difference in percentage points (``robench.compare.compare_frames``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from robench.compare import cell_differences
from robench.config import load_suite
from robench.eps import canonical_eps
from robench.errors import UserError
from robench.outcomes import Cell, CellOutcomes, read_cell_outcomes
from robench.outdir import RunFiles, resolve_out
from robench.results import read_results
from robench.run_files import RESULTS_FILE
from robench.rundata import RunOptions, apply_overrides
from robench.runner import RunEnd, run_suite

WHERE = "--recompute-into"


def new_folder(existing: Path, into: str | None) -> Path:
    """The folder a recompute writes: ``into``, else ``<existing>-recompute-<UTC time>``;
    a ``UserError`` when it exists and is not an empty folder, or is the existing one."""
    if into is not None and not into.strip():
        raise UserError("empty folder name", where=WHERE)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = resolve_out(into) if into is not None else \
        existing.with_name(f"{existing.name}-recompute-{stamp}")
    if target.absolute() == existing.absolute():
        raise UserError("is the folder it is compared with; give a new folder", where=WHERE)
    # one run's folder never holds another's: neither may lie inside the other
    outer, inner = existing.resolve(), target.resolve()
    if outer in inner.parents or inner in outer.parents:
        raise UserError(f"lies {'inside' if outer in inner.parents else 'around'} the folder "
                        f"it is compared with ({existing}); give a folder beside it",
                        where=WHERE)
    if os.path.lexists(existing) and not existing.is_dir():
        raise UserError("is not a folder", where="--out")
    if os.path.lexists(target) and (not target.is_dir() or any(target.iterdir())):
        raise UserError("exists and is not empty; --recompute writes only into a new or empty "
                        "folder", where=str(target))
    return target


def comparison_line(existing: Path, new: Path) -> str:
    """One line: how many cells of ``new`` are bit-identical to ``existing``'s, how many differ
    and by how much at most (pp)."""
    if not os.path.lexists(existing / RESULTS_FILE):
        return f"recomputed into {new}; {existing} holds no results to compare with"
    old_files, new_files = RunFiles.of(existing), RunFiles.of(new)
    old, fresh = read_results(existing, old_files), read_results(new, new_files)
    old_out = read_cell_outcomes(existing, old_files)
    new_out = read_cell_outcomes(new, new_files)
    cells = cell_differences(old, fresh)  # seed by seed: a mean over seeds could hide one
    same = _identical_cells(old, fresh, old_out, new_out)
    shared = len(cells)
    identical = sum(1 for key in _order(cells) if key in same)
    worst = float(np.nanmax(np.abs(cells["diff_pp"]))) if shared else 0.0
    only = len(fresh) - len(_present(fresh) & _present(old))
    extra = f"; {only} cells only in the new run" if only > 0 else ""
    return (f"recomputed into {new}: {identical} of {shared} cells bit-identical to {existing}, "
            f"{shared - identical} differ (largest difference {worst:.2f} pp){extra}")


def _present(results: pd.DataFrame) -> set[tuple[str, str, float, int]]:
    return set(_order(results))


def _identical_cells(old: pd.DataFrame, new: pd.DataFrame,
                     old_out: dict[Cell, CellOutcomes] | None,
                     new_out: dict[Cell, CellOutcomes] | None
                     ) -> set[tuple[str, str, float, int]]:
    """The (defense, attack, eps, seed) both runs hold with the same robust accuracy and, with
    both runs' outcomes, the same per-image outcomes in the same order."""
    blocks_a, blocks_b = old_out or {}, new_out or {}
    acc_a = {key: float(r) for key, r in zip(_order(old), old["robust_acc"], strict=True)}
    same: set[tuple[str, str, float, int]] = set()
    for key, robust in zip(_order(new), new["robust_acc"], strict=True):
        if key not in acc_a:
            continue
        equal = acc_a[key] == float(robust)
        if key in blocks_a or key in blocks_b:
            a, b = blocks_a.get(key), blocks_b.get(key)
            equal = equal and a is not None and b is not None and all(
                np.array_equal(x, y) for x, y in ((a.image, b.image),
                                                  (a.clean_correct, b.clean_correct),
                                                  (a.adv_correct, b.adv_correct)))
        if equal:
            same.add(key)
    return same


def _order(results: pd.DataFrame) -> list[tuple[str, str, float, int]]:
    return [(str(d), str(a), canonical_eps(e), int(s)) for d, a, e, s in
            zip(results["defense"], results["attack"], results["eps"], results["seed"],
                strict=True)]


def recompute(path: str | Path, opts: RunOptions, into: str | None,
              echo: Callable[[str], None] = print) -> RunEnd:
    """Run the suite from scratch into a new folder and compare it with the existing one (see
    the module); the returned line is the comparison."""
    suite = apply_overrides(load_suite(path), opts, str(path))
    existing = Path(opts.out) if opts.out else Path("results") / suite.name
    target = new_folder(existing, into)
    out_dir, board = run_suite(path, replace(opts, out=str(target), force=True))
    return RunEnd(out_dir, board, comparison_line(existing, out_dir), 0)


__all__ = ["comparison_line", "new_folder", "recompute"]
