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

import io
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from robench.eps import canonical_eps
from robench.errors import UserError
from robench.outdir import OutputFolder, RunFiles
from robench.run_files import OUTCOMES_FILE

if TYPE_CHECKING:  # the type only: storage does not depend on how outcomes are computed
    from robench.evaluation import AttackOutcome

OUTCOME_COLUMNS = ["defense", "attack", "eps", "seed", "image", "clean_correct", "adv_correct"]
KEY_COLUMNS = OUTCOME_COLUMNS[:4]  # a cell


Cell = tuple[str, str, float, int]  # (defense, attack, eps, seed), eps canonical


def cell_grid(defenses: Iterable[str], attacks: Iterable[tuple[str, Iterable[float]]],
              seeds: Iterable[int], only: Mapping[str, Iterable[str]] | None = None
              ) -> set[Cell]:
    """The cells of a run: every defense label x every attack label at each of its eps x every
    seed, except that an attack in ``only`` runs on the defenses listed there only (a suite
    entry's ``defenses:``, an adaptive variant's: ``robench.plan.applies``). The one
    definition behind a resolved plan's cells (``robench.recorder.plan_cells``) and a recorded
    one's (``robench.completeness.planned_cells``)."""
    defenses, attacks = list(defenses), [(label, list(eps)) for label, eps in attacks]
    restricted = {a: set(on) for a, on in (only or {}).items()}
    return {(d, a, canonical_eps(e), int(s)) for s in seeds for d in defenses
            for a, eps in attacks if a not in restricted or d in restricted[a] for e in eps}


@dataclass(frozen=True)
class CellOutcomes:
    """One cell's outcomes: numpy arrays, one entry per image, in evaluation (stored) order."""

    image: np.ndarray          # int32
    clean_correct: np.ndarray  # bool
    adv_correct: np.ndarray    # bool

    def __len__(self) -> int:
        return len(self.image)


class OutcomeTable:
    """The per-image outcomes of a run, one block per cell, in the order the cells were stored.

    Held as one small block per cell rather than one big frame: storing a cell, dropping cells
    and looking one up then cost the cell's size, not the table's (masking and concatenating
    the whole frame after every cell made temporaries of the whole table's size); the file is
    written one row group at a time for the same reason."""

    #: at most this many rows per row group of the file (pyarrow's default), cut between cells
    ROW_GROUP = 1024 * 1024

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder
        self.path = folder.path / OUTCOMES_FILE
        self._cells: dict[Cell, CellOutcomes] = {}

    def __len__(self) -> int:
        return sum(len(b.image) for b in self._cells.values())

    def load_existing(self, data: bytes | None = None) -> bool:
        """Read the outcomes on disk (or ``data``, the file's bytes as a reader verified them:
        ``robench plan``); False when the file exists but cannot be read."""
        if data is None and not self.path.exists():
            return True

        def typed(pieces: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            # the image ids are checked, then cast, by _merge_cells (a cast here would wrap)
            keys = {c: t for c, t in _DTYPES.items() if c != "image"}
            for frame in pieces:
                yield frame.astype(keys)

        # read a piece at a time, as verify reads (the whole frame and its grouping took
        # about 50 bytes an image); any damage means: trust none of it
        try:
            raw = data if data is not None else self.path.read_bytes()
            # rows of one cell under two spellings of its eps are all kept, in file order (the
            # cell is redone unless they are then its planned images, in order); rows at an
            # eps no run has, or with a missing label, are in no cell
            self._cells = _merge_cells(typed(_pieces_of(raw, self.path)), self.path)
        except (UserError, OSError, TypeError, ValueError):
            return False
        return True

    def cell(self, defense: str, attack: str, eps: float, seed: int) -> pd.DataFrame:
        """One cell's rows, as in the file (empty when the cell has none)."""
        return self._frame([(defense, attack, canonical_eps(eps), seed)])

    def counts(self, defense: str, attack: str, eps: float, seed: int,
               image_ids: Sequence[int]) -> tuple[int, int, int] | None:
        """(clean correct, robust, fooled) of a cell whose stored outcomes are for exactly these
        images in this order; None when they are missing or for other images."""
        block = self._cells.get((defense, attack, canonical_eps(eps), seed))
        if block is None or not np.array_equal(block.image, np.asarray(image_ids)):
            return None
        clean, adv = block.clean_correct, block.adv_correct
        return int(clean.sum()), int((clean & adv).sum()), int((clean & ~adv).sum())

    def replace_cells(self, defense: str, attack: str, seed: int, image_ids: Sequence[int],
                      outcomes: list[AttackOutcome]) -> None:
        """Store the outcomes of cells of one attack entry (one per eps) and flush; a cell
        stored again moves to the end, as a new one."""
        image = np.asarray(image_ids, dtype=np.int32)
        for o in outcomes:
            key = (defense, attack, canonical_eps(o.eps), seed)
            self._cells.pop(key, None)
            self._cells[key] = CellOutcomes(image, o.clean_ok.numpy().astype(bool),
                                      o.adv_ok.numpy().astype(bool))
        self.flush()

    def cells(self) -> set[Cell]:
        """The cells it holds."""
        return set(self._cells)

    def move_cells(self, other: OutcomeTable, cells: Iterable[Cell]) -> None:
        """Move these cells' outcomes (those it holds) into ``other``, where each goes to the
        end as a new one; neither table is flushed."""
        for key in cells:
            key = (key[0], key[1], canonical_eps(key[2]), key[3])
            block = self._cells.pop(key, None)
            if block is not None:
                other._cells.pop(key, None)
                other._cells[key] = block

    def keep_only(self, cells: set[Cell]) -> None:
        """Drop every stored cell that is not one of ``cells`` (and flush if any went)."""
        wanted = {(d, a, canonical_eps(e), s) for d, a, e, s in cells}
        kept = {k: b for k, b in self._cells.items() if k in wanted}
        if len(kept) != len(self._cells):
            self._cells = kept
            self.flush()

    def reorder(self, rank: Callable[[Cell], int]) -> None:
        """Put the cells in the order of ``rank`` (stable) and flush if that moved any."""
        order = sorted(self._cells, key=rank)
        if order != list(self._cells):
            self._cells = {k: self._cells[k] for k in order}
            self.flush()

    def flush(self) -> None:
        keys = list(self._cells)
        categories = {"defense": sorted({k[0] for k in keys}),
                      "attack": sorted({k[1] for k in keys})}
        with self.folder.temp_file(OUTCOMES_FILE) as tmp:
            writer = None
            for group in _groups(keys, self._cells, self.ROW_GROUP):
                table = pa.Table.from_pandas(self._frame(group, categories), preserve_index=False)
                if writer is None:
                    # one page per column chunk: a cell's image ids repeat in every cell of its
                    # kind, and zstd sees the repeats only within a page (pyarrow's default of
                    # 20 000 rows a page made the flagship's whole file 7x larger than this)
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd",
                                              max_rows_per_page=self.ROW_GROUP,
                                              data_page_size=1 << 30)
                writer.write_table(table, row_group_size=self.ROW_GROUP)
            if writer is None:  # no cells: an empty table with the columns and types
                self._frame([], categories).to_parquet(tmp, index=False, compression="zstd")
            else:
                writer.close()

    def _frame(self, keys: list[Cell], categories: dict[str, list[str]] | None = None
               ) -> pd.DataFrame:
        """The rows of these cells as one frame with the file's columns and types."""
        blocks = [self._cells[k] for k in keys if k in self._cells]
        keys = [k for k in keys if k in self._cells]
        sizes = [len(b.image) for b in blocks]
        cats = categories or {"defense": sorted({k[0] for k in keys}),
                              "attack": sorted({k[1] for k in keys})}

        def column(i: int, dtype: str) -> np.ndarray:
            return np.repeat(np.array([k[i] for k in keys], dtype=dtype), sizes)

        def labels(i: int, name: str) -> pd.Categorical:
            # from codes: building it from a million repeated strings took seconds per flush
            code: dict[object, int] = {c: n for n, c in enumerate(cats[name])}
            codes = np.repeat(np.array([code[k[i]] for k in keys], dtype=np.int64), sizes)
            return pd.Categorical.from_codes(codes, categories=cats[name])

        def joined(field: str, dtype: type) -> np.ndarray:
            return (np.concatenate([getattr(b, field) for b in blocks]) if blocks
                    else np.zeros(0, dtype=dtype))

        return pd.DataFrame({
            "defense": labels(0, "defense"), "attack": labels(1, "attack"),
            "eps": column(2, "float64"), "seed": column(3, "int64"),
            "image": joined("image", np.int32), "clean_correct": joined("clean_correct", bool),
            "adv_correct": joined("adv_correct", bool)})


def _cell_outcomes(frame: pd.DataFrame) -> Iterator[tuple[Cell, CellOutcomes]]:
    """Each cell of a checked outcomes frame (``_cell_rows``) with its rows, copied (a slice
    would keep the whole frame alive), image ids as int32 (checked to fit by the caller)."""
    image = frame["image"].to_numpy()
    clean = frame["clean_correct"].to_numpy(bool)
    adv = frame["adv_correct"].to_numpy(bool)
    for cell, rows in _cell_rows(frame).items():
        yield cell, CellOutcomes(image[rows].astype(np.int32), clean[rows].copy(),
                                 adv[rows].copy())


def _groups(keys: list[Cell], cells: dict[Cell, CellOutcomes], size: int) -> Iterator[list[Cell]]:
    """Consecutive runs of cells of at most ``size`` rows (a bigger cell alone)."""
    group: list[Cell] = []
    rows = 0
    for key in keys:
        n = len(cells[key].image)
        if group and rows + n > size:
            yield group
            group, rows = [], 0
        group.append(key)
        rows += n
    if group:
        yield group


_DTYPES = {"defense": "category", "attack": "category", "eps": "float64", "seed": "int64",
           "image": "int32", "clean_correct": "bool", "adv_correct": "bool"}


class RobustPerImage:
    """Per cell (defense, attack, eps, seed) of an outcomes table: whether each image is robust
    (correct before and after the attack), a boolean Series indexed by image id, in the table's
    order. Built in one pass, so that checks and the leaderboard look a cell up instead of
    filtering the whole table per question: a filter per question costs a pass over millions
    of rows (and a copy), and the leaderboard and checks ask hundreds of questions, so
    filtering set both the finalize step's time and the run's peak memory. Rows in no cell
    (``_cell_rows``) are left out, and so is a cell that holds an image twice."""

    def __init__(self, outcomes: pd.DataFrame | Iterable[pd.DataFrame]) -> None:
        """Index one outcomes frame, or the pieces of one (a file's row groups) in order."""
        frames = [outcomes] if isinstance(outcomes, pd.DataFrame) else outcomes
        pieces: dict[Cell, list[tuple[np.ndarray, np.ndarray]]] = {}
        for frame in frames:
            if bad := _not_boolean(frame):  # a cast would read the string "False" as True
                raise ValueError(f"outcomes column {bad!r} holds values that are not booleans")
            robust = frame["clean_correct"].to_numpy(bool) & frame["adv_correct"].to_numpy(bool)
            image = frame["image"].to_numpy()
            for cell, rows in _cell_rows(frame).items():
                pieces.setdefault(cell, []).append((robust[rows], image[rows]))
        self.cells: dict[Cell, pd.Series] = {}
        for cell, parts in pieces.items():
            image = np.concatenate([i for _, i in parts])
            if _unique(image):  # an image twice in a cell: the cell is not trusted
                self.cells[cell] = pd.Series(np.concatenate([r for r, _ in parts]),
                                             index=image, name="robust")

    @classmethod
    def of(cls, outcomes: pd.DataFrame | RobustPerImage | None) -> RobustPerImage | None:
        """``outcomes`` indexed once (an index is returned as it is; None stays None)."""
        if outcomes is None or isinstance(outcomes, RobustPerImage):
            return outcomes
        return cls(outcomes)

    def get(self, defense: str, attack: str, eps: float, seed: int) -> pd.Series | None:
        """One cell's robust-per-image Series, None when the table has no such cell."""
        return self.cells.get((str(defense), str(attack), canonical_eps(eps), int(seed)))


def _unique(ids: np.ndarray) -> bool:
    """Whether no id occurs twice, found by sorting: pandas' ``Index.is_unique`` builds a hash
    table that the index keeps (about 20 bytes an image: 243 MiB for the flagship's 12.7 M
    outcomes), which a run's finalize step and ``robench verify`` then carried to the end."""
    if ids.dtype.kind not in "iu":  # missing ids (a float or nullable column): as pandas
        return bool(pd.Index(ids).is_unique)
    if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):  # stored in ascending order
        return True
    ordered = np.sort(ids)
    return not bool(np.any(ordered[1:] == ordered[:-1]))


def _cell_rows(outcomes: pd.DataFrame) -> dict[Cell, slice | np.ndarray]:
    """The rows of each cell of ``outcomes``, in file order; rows at an eps no run has (NaN,
    inf), with a fractional seed or with a missing label are in no cell. A stored table holds
    each cell in one run of consecutive rows, which a few comparisons per row find (a group-by
    on the four keys makes large temporaries on a full suite's table); a table cut into short runs
    (rows shuffled by hand) is grouped instead, which is cheaper there."""
    n = len(outcomes)
    if n == 0:
        return {}
    starts = np.zeros(n, bool)
    starts[0] = True
    for column in KEY_COLUMNS:
        values = outcomes[column]
        if isinstance(values.dtype, pd.CategoricalDtype):
            values = values.cat.codes.to_numpy()
        elif values.dtype.kind in "biuf":
            values = values.to_numpy()
        else:  # text labels: compare codes (a missing label, NA, cannot be compared)
            values = pd.factorize(values)[0]
        differs = values[1:] != values[:-1]
        if values.dtype.kind == "f":  # NaN != NaN: consecutive NaN rows are still one run
            differs &= ~(np.isnan(values[1:]) & np.isnan(values[:-1]))
        starts[1:] |= differs
    first = np.flatnonzero(starts)
    if len(first) > max(MAX_RUNS, n // MIN_RUN):
        groups = outcomes.groupby(KEY_COLUMNS, sort=False, observed=True).indices
        found: Iterable[tuple[tuple, slice | np.ndarray]] = groups.items()
    else:
        keys = zip(*(outcomes[c].iloc[first].tolist() for c in KEY_COLUMNS), strict=True)
        found = zip(keys, map(slice, first.tolist(), [*first[1:].tolist(), n]), strict=True)
    rows: dict[Cell, list[slice | np.ndarray]] = {}
    for (d, a, e, seed), where in found:
        cell = _cell(d, a, e, seed)
        if cell is not None:  # a cell in several runs, or under two spellings of its eps
            rows.setdefault(cell, []).append(where)
    return {cell: parts[0] if len(parts) == 1 else np.sort(np.concatenate(
        [np.arange(p.start, p.stop) if isinstance(p, slice) else p for p in parts]))
        for cell, parts in rows.items()}


#: a table cut into more runs than this, and than one per MIN_RUN rows, is grouped instead
MAX_RUNS = 100_000
MIN_RUN = 100


def _cell(defense: Any, attack: Any, eps: Any, seed: Any) -> Cell | None:
    """The cell of a row's keys; None for a missing label, an eps no run has, a seed that is
    not a whole number."""
    try:
        if pd.isna(defense) or pd.isna(attack) or float(seed) != int(seed):
            return None
        return (str(defense), str(attack), canonical_eps(eps), int(seed))
    except (TypeError, ValueError, OverflowError):
        return None


def _int32_ids(image: pd.Series) -> bool:
    """Whether image ids are whole numbers that the int32 column holds (a cast would wrap
    2**32 + 7 to the planned id 7)."""
    if image.dtype.kind not in "iu":
        return False
    return image.empty or (int(image.min()) >= 0 and int(image.max()) <= np.iinfo(np.int32).max)


def _not_boolean(frame: pd.DataFrame) -> str | None:
    """The first correctness column that is not all booleans, else None. Checked before any
    cast: ``astype(bool)`` reads the string "False", or 2, as True."""
    for column in ("clean_correct", "adv_correct"):
        values = frame[column]
        if not pd.api.types.is_bool_dtype(values) or values.isna().any():
            return column
    return None


def _verified_bytes(folder: Path, files: RunFiles | None) -> bytes | None:
    """The outcomes file's bytes as robench wrote it (``robench.outdir.verify``); None when
    the folder has none (a dangling link is damage, not "no outcomes": refused)."""
    if files is None and not os.path.lexists(Path(folder) / OUTCOMES_FILE):
        return None
    return (files or RunFiles.of(folder)).read(OUTCOMES_FILE)


def read_outcomes(folder: Path, files: RunFiles | None = None) -> pd.DataFrame | None:
    """The per-image outcomes of a results folder, or None when it has none; read through
    ``files`` (default ``RunFiles.of(folder)``), i.e. verified before it is parsed."""
    path = Path(folder) / OUTCOMES_FILE
    data = _verified_bytes(folder, files)
    if data is None:
        return None
    try:
        frame = pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types on damage
        raise _unreadable(path, err) from None
    _check_columns(list(frame.columns), path)
    return _checked(frame, path)


def read_robust_per_image(folder: Path, files: RunFiles | None = None
                          ) -> RobustPerImage | None:
    """What ``read_outcomes`` reads, indexed by cell (``RobustPerImage``), read a piece at a
    time (``_pieces``). None when the folder has no outcomes; damage as ``read_outcomes``."""
    pieces = _pieces(folder, files)
    return None if pieces is None else RobustPerImage(pieces)


def read_cell_outcomes(folder: Path, files: RunFiles | None = None
                       ) -> dict[Cell, CellOutcomes] | None:
    """What ``read_outcomes`` reads, by cell (its rows in stored order; a cell stored in
    several runs of rows, or under two spellings of its eps, is one cell), read a piece at a
    time (``_pieces``): about 6 bytes an image, where the whole frame takes about 25 and a
    group-by over it as much again (the flagship's 12.7 M rows). None when the folder has no
    outcomes; damage as ``read_outcomes``."""
    pieces = _pieces(folder, files)
    return None if pieces is None else _merge_cells(pieces, Path(folder) / OUTCOMES_FILE)


def _merge_cells(pieces: Iterable[pd.DataFrame], path: Path) -> dict[Cell, CellOutcomes]:
    """Each cell's rows over all ``pieces`` of a table, in stored order (a cell stored in
    several runs of rows, or under two spellings of its eps, is one cell)."""
    parts: dict[Cell, list[CellOutcomes]] = {}
    for frame in pieces:
        if not _int32_ids(frame["image"]):  # the int32 cast below would wrap 2**32 + 7 to 7
            raise UserError("not a robench outcomes table (image ids that are not whole "
                            "numbers an int32 column holds)", where=str(path))
        for cell, block in _cell_outcomes(frame):
            parts.setdefault(cell, []).append(block)
    return {cell: p[0] if len(p) == 1 else CellOutcomes(
        *(np.concatenate([getattr(b, f) for b in p])
          for f in ("image", "clean_correct", "adv_correct")))
        for cell, p in parts.items()}


#: ``_pieces`` reads whole row groups, this many rows or more at a time (a robench file has
#: row groups of up to 1 M rows: one at a time)
READ_ROWS = 256 * 1024


def _pieces(folder: Path, files: RunFiles | None) -> Iterator[pd.DataFrame] | None:
    """The rows of a folder's outcomes file about READ_ROWS at a time, whole row groups, each
    checked as ``read_outcomes`` checks the table; None when the folder has none. The columns
    are checked now, each piece as it is read. The table itself is never held whole (only
    the file's compressed bytes, which are verified before they are parsed), so what a reader
    builds from the pieces is the only large thing in memory."""
    data = _verified_bytes(folder, files)
    return None if data is None else _pieces_of(data, Path(folder) / OUTCOMES_FILE)


def _pieces_of(data: bytes, path: Path) -> Iterator[pd.DataFrame]:
    """``_pieces`` of an outcomes file's bytes (``path`` names it in errors)."""
    try:
        file = pq.ParquetFile(pa.BufferReader(data))
        schema = file.schema_arrow
        # a frame saved by pandas with an index stores it as a column: read_parquet hides it
        hidden = {c for c in (schema.pandas_metadata or {}).get("index_columns", [])
                  if isinstance(c, str)}
    except Exception as err:  # noqa: BLE001 - pyarrow raises several types on damage
        raise _unreadable(path, err) from None
    _check_columns([n for n in schema.names if n not in hidden], path)

    def row_groups() -> Iterator[pd.DataFrame]:
        """About READ_ROWS rows at a time, whole row groups (a file of many small ones is not
        read one by one: each read has a fixed cost that would dominate)."""
        groups: list[int] = []
        rows = 0
        for i in range(file.num_row_groups):
            groups.append(i)
            rows += file.metadata.row_group(i).num_rows
            if rows < READ_ROWS and i + 1 < file.num_row_groups:
                continue
            try:
                frame = file.read_row_groups(groups, columns=OUTCOME_COLUMNS).to_pandas()
            except Exception as err:  # noqa: BLE001
                raise _unreadable(path, err) from None
            yield _checked(frame, path)
            groups, rows = [], 0

    return row_groups()


def _unreadable(path: Path, err: Exception) -> UserError:
    return UserError(f"not a readable outcomes table ({type(err).__name__})", where=str(path))


def _check_columns(names: list[str], path: Path) -> None:
    if names != OUTCOME_COLUMNS:
        raise UserError(f"not a robench outcomes table (columns {names[:8]})", where=str(path))


def _checked(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    if bad := _not_boolean(frame):
        raise UserError(f"not a robench outcomes table (column {bad!r} holds values that are "
                        "not booleans)", where=str(path))
    return frame
