"""Per-image outcomes: for every cell (defense, attack, eps, seed) and every evaluated test image,
whether it was classified correctly before the attack and after it.

Stored as one tidy table, ``outcomes.parquet`` (read it with ``pd.read_parquet``), beside
results.csv, rewritten atomically after every finished cell like results.csv. Columns:
``defense, attack, eps, seed`` (the cell, as in results.csv), ``image`` (the image's index in
the dataset's test split), ``clean_correct`` and ``adv_correct`` (booleans). An image is robust
in a cell when both are true; results.csv's ``robust_acc`` is that share. Per-image outcomes are
what a true worst case over attacks and paired tests between defenses need.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robench.eps import canonical_eps
from robench.errors import UserError
from robench.evaluation import AttackOutcome
from robench.outdir import OutputFolder

OUTCOMES_FILE = "outcomes.parquet"
OUTCOME_COLUMNS = ["defense", "attack", "eps", "seed", "image", "clean_correct", "adv_correct"]


class OutcomeTable:
    """The per-image outcomes of a run, one block of rows per cell."""

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        self.path = folder.path / OUTCOMES_FILE
        self.frame = pd.DataFrame({c: pd.Series(dtype=t) for c, t in _DTYPES.items()})

    def load_existing(self) -> bool:
        """Read the outcomes on disk; False when the file exists but cannot be read."""
        if not self.path.exists():
            return True
        try:
            frame = pd.read_parquet(self.path)
        except Exception:  # noqa: BLE001 - any damage means: trust none of it
            return False
        if list(frame.columns) != OUTCOME_COLUMNS:
            return False
        self.frame = frame.astype(_DTYPES)
        return True

    def cell(self, defense: str, attack: str, eps: float, seed: int) -> pd.DataFrame:
        f = self.frame
        return f[(f["defense"] == defense) & (f["attack"] == attack)
                 & (f["eps"] == canonical_eps(eps)) & (f["seed"] == seed)]

    def counts(self, defense: str, attack: str, eps: float, seed: int,
               image_ids: Sequence[int]) -> tuple[int, int, int] | None:
        """(clean correct, robust, fooled) of a cell whose stored outcomes are for exactly these
        images in this order; None when they are missing or for other images."""
        rows = self.cell(defense, attack, eps, seed)
        if len(rows) != len(image_ids) or rows["image"].tolist() != list(image_ids):
            return None
        clean, adv = rows["clean_correct"], rows["adv_correct"]
        return int(clean.sum()), int((clean & adv).sum()), int((clean & ~adv).sum())

    def replace_cells(self, defense: str, attack: str, seed: int, image_ids: Sequence[int],
                      outcomes: list[AttackOutcome]) -> None:
        """Store the outcomes of cells of one attack entry (one per eps) and flush."""
        f = self.frame
        eps = [canonical_eps(o.eps) for o in outcomes]
        keep = ~((f["defense"] == defense) & (f["attack"] == attack) & (f["seed"] == seed)
                 & f["eps"].isin(eps))
        blocks = [f[keep]] + [pd.DataFrame({
            "defense": defense, "attack": attack, "eps": canonical_eps(o.eps), "seed": seed,
            "image": list(image_ids), "clean_correct": o.clean_ok.numpy(),
            "adv_correct": o.adv_ok.numpy()}) for o in outcomes]
        self.frame = pd.concat(blocks, ignore_index=True).astype(_DTYPES)
        self.flush()

    def keep_only(self, cells: set[tuple[str, str, float, int]]) -> None:
        f = self.frame
        keys = pd.MultiIndex.from_arrays([f["defense"].astype(str), f["attack"].astype(str),
                                          f["eps"], f["seed"]])
        keep = keys.isin(list(cells)) if cells else [False] * len(f)
        if not all(keep):
            self.frame = f[keep].reset_index(drop=True)
            self.flush()

    def flush(self) -> None:
        with self.folder.temp_file(OUTCOMES_FILE) as tmp:
            self.frame.to_parquet(tmp, index=False, compression="zstd")


_DTYPES = {"defense": "category", "attack": "category", "eps": "float64", "seed": "int64",
           "image": "int32", "clean_correct": "bool", "adv_correct": "bool"}


def read_outcomes(folder: Path) -> pd.DataFrame | None:
    """The per-image outcomes of a results folder, or None when it has none."""
    path = Path(folder) / OUTCOMES_FILE
    if not path.exists():
        return None
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types on damage
        raise UserError(f"not a readable outcomes table ({type(err).__name__})",
                        where=str(path)) from None
    if list(frame.columns) != OUTCOME_COLUMNS:
        raise UserError(f"not a robench outcomes table (columns {list(frame.columns)[:8]})",
                        where=str(path))
    return frame
