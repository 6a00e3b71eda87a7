"""Per-image outcomes: robust means correct before AND after the attack; eps 0 goes through the
attack path; outcomes.parquet agrees with results.csv and resume checks that it does."""

from __future__ import annotations

import io

import pandas as pd
import pytest
import torch

from robench.attacks import Attack
from robench.data import Split
from robench.evaluation import AttackOutcome, evaluate_attack
from robench.training import predict


class Swap(Attack):
    """Test attack: replaces every image by ``target`` (reachable at eps 1)."""

    def __init__(self, model, target):
        super().__init__(model)
        self.target = target

    def perturb(self, x, y, eps):
        return self.target.expand_as(x).clone()


def test_an_image_wrong_before_the_attack_is_never_robust(trained_lenet, mnist):
    test = mnist.test.head(2000)
    pred = predict(trained_lenet, test.images)
    wrong = (pred != test.labels).nonzero().squeeze(1)
    assert len(wrong) > 0
    label = int(test.labels[wrong[0]])
    # a correctly classified image of that class: the "attack" turns x into it
    right = ((pred == test.labels) & (test.labels == label)).nonzero().squeeze(1)[0]
    data = Split(test.images[torch.tensor([wrong[0], right])],
                 test.labels[torch.tensor([wrong[0], right])])
    (outcome,) = evaluate_attack(trained_lenet, Swap(trained_lenet, test.images[right]), [1.0],
                                 data)
    assert outcome.clean_ok.tolist() == [False, True]
    assert outcome.adv_ok.tolist() == [True, True]        # the attack "fixed" image 0
    assert outcome.robust.tolist() == [False, True]       # but it is not robust
    assert outcome.robust_acc == 0.5 and outcome.robust_acc <= outcome.clean_acc


def test_eps_zero_goes_through_the_attack_path(trained_lenet, batch):
    x, y = batch
    calls = []

    class Noisy(torch.nn.Module):
        """A model whose every forward pass after the first flips its answers."""

        def forward(self, inputs):
            calls.append(1)
            logits = trained_lenet(inputs)
            return logits if len(calls) == 1 else -logits

    model = Noisy()
    (zero,) = evaluate_attack(model, Swap(model, x[0]), [0.0], Split(x[:100], y[:100]))
    assert zero.clean_acc > 0.5 and zero.robust_acc < zero.clean_acc  # eps 0 != clean: visible


@pytest.mark.slow
def test_outcomes_parquet_matches_results_and_is_verified_on_resume(tmp_path, robench_cli):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: o\ndata: {dataset: mnist, eval_limit: 300, validation_size: 55000}\n"
                     "train: {epochs: 1}\n"
                     "attacks:\n  - name: fgsm\n    eps: [0.0, 0.1]\n"
                     "  - name: pgd\n    eps: [0.1]\n    limit: 100\n"
                     "    params: {steps: 3, alpha: 0.05}\n")
    out = tmp_path / "out"

    def run(*args):
        proc = robench_cli("run", str(suite), "--out", str(out), "--quiet", *args)
        assert proc.returncode == 0, proc.stderr
        return (out / "run.log").read_text().split("suite o:")[-1]

    run()
    results = pd.read_csv(out / "results.csv")
    outcomes = pd.read_parquet(out / "outcomes.parquet")
    assert len(outcomes) == 300 * 2 + 100
    images = {}
    for row in results.itertuples():
        cell = outcomes[(outcomes["attack"] == row.attack) & (outcomes["eps"] == row.eps)]
        images[row.attack] = set(cell["image"])
        assert len(cell) == row.n == cell["image"].nunique()
        assert cell["clean_correct"].mean() == pytest.approx(row.clean_acc)
        assert (cell["clean_correct"] & cell["adv_correct"]).mean() == pytest.approx(
            row.robust_acc)
        assert row.robust_acc_lo <= row.robust_acc <= row.robust_acc_hi
    # random subsets (not the first test images), the smaller nested in the larger
    assert images["pgd"] < images["fgsm"] and images["fgsm"] != set(range(300))

    # a hand-edited outcomes file is no longer robench's: the run refuses, changing nothing
    tampered = outcomes.copy()
    pgd = tampered["attack"] == "pgd"
    tampered.loc[pgd, "adv_correct"] = ~tampered.loc[pgd, "adv_correct"]
    tampered.to_parquet(out / "outcomes.parquet", index=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = robench_cli("run", str(suite), "--out", str(out), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{out / 'outcomes.parquet'}: differs from what robench wrote" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    # moved away, the outcomes are missing: a plain run reports it and writes nothing;
    # --update recomputes every cell, to the same outcomes
    (out / "outcomes.parquet").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    proc = robench_cli("run", str(suite), "--out", str(out), "--quiet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "has no outcomes.parquet" in proc.stderr and "--update" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    log = run("--update")
    assert "already in results.csv, skipped" not in log
    assert "[none] pgd robust accuracy" in log and "[none] fgsm robust accuracy" in log
    pd.testing.assert_frame_equal(pd.read_parquet(out / "outcomes.parquet")
                                  .sort_values(["attack", "eps", "image"]).reset_index(drop=True),
                                  outcomes.sort_values(["attack", "eps", "image"])
                                  .reset_index(drop=True), check_categorical=False)


def _outcome(eps, clean, adv):
    return AttackOutcome(eps, torch.tensor(clean), torch.tensor(adv), 0.0)


def _stored_cell(folder, clean=(True, True), adv=(False, True)):
    """An outcome table holding one cell (none, fgsm, eps 0.1, seed 0; images 3 and 4), and
    the file's frame."""
    from robench.outcomes import OutcomeTable
    table = OutcomeTable(folder)
    table.replace_cells("none", "fgsm", 0, [3, 4], [_outcome(0.1, list(clean), list(adv))])
    return table, pd.read_parquet(table.path)


def test_outcome_table_stores_replaces_keeps_and_reorders_cells_by_block(tmp_path):
    from robench.outcomes import OutcomeTable, read_outcomes
    from robench.outdir import OutputFolder

    with OutputFolder.open(tmp_path / "run") as folder:
        table = OutcomeTable(folder)
        table.ROW_GROUP = 3  # several row groups in a small file
        table.replace_cells("none", "fgsm", 0, [7, 2],
                            [_outcome(0.1, [True, True], [False, True]),
                             _outcome(0.3, [True, True], [False, False])])
        table.replace_cells("at", "pgd", 0, [7, 2], [_outcome(0.1, [True, False], [True, True])])
        table.replace_cells("none", "fgsm", 0, [7, 2],  # stored again: moves to the end
                            [_outcome(0.1, [False, True], [False, True])])
        frame = read_outcomes(folder.path)
        assert list(zip(frame["defense"], frame["attack"], frame["eps"], frame["image"],
                        strict=True)) == [
            ("none", "fgsm", 0.3, 7), ("none", "fgsm", 0.3, 2), ("at", "pgd", 0.1, 7),
            ("at", "pgd", 0.1, 2), ("none", "fgsm", 0.1, 7), ("none", "fgsm", 0.1, 2)]
        assert frame["clean_correct"].tolist()[-2:] == [False, True]
        assert [str(t) for t in frame.dtypes] == ["category", "category", "float64", "int64",
                                                  "int32", "bool", "bool"]
        assert table.counts("none", "fgsm", 0.1, 0, [7, 2]) == (1, 1, 0)
        assert table.counts("none", "fgsm", 0.1, 0, [2, 7]) is None  # other images/order
        assert table.counts("none", "fgsm", 0.2, 0, [7, 2]) is None  # no such cell
        table.reorder(lambda key: 0 if key[0] == "at" else 1)
        assert read_outcomes(folder.path)["defense"].tolist()[:2] == ["at", "at"]
        table.keep_only({("none", "fgsm", 0.1, 0), ("at", "pgd", 0.1, 0)})
        again = OutcomeTable(folder)
        assert again.load_existing() and len(again) == 4
        assert again.cell("none", "fgsm", 0.3, 0).empty
        pd.testing.assert_frame_equal(again.cell("at", "pgd", 0.1, 0).reset_index(drop=True),
                                      table.cell("at", "pgd", 0.1, 0))
        table.keep_only(set())
        assert read_outcomes(folder.path).empty
        assert list(read_outcomes(folder.path).columns) == list(frame.columns)


def _image_column_bytes(source) -> int:
    """The compressed size of the ``image`` column over a parquet file's row groups."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(source).metadata
    index = meta.schema.names.index("image")
    return sum(meta.row_group(g).column(index).total_compressed_size
               for g in range(meta.num_row_groups))


def test_cells_sharing_their_image_ids_are_stored_compactly_and_read_back_equal(tmp_path):
    """Every cell of a run repeats the same shuffled image ids: the file stores the repeats
    once per row group, not once per pyarrow default page (20 000 rows), which made a
    flagship file of 4 MB where 0.5 MB holds the same rows."""
    import numpy as np

    from robench.outcomes import OutcomeTable, read_outcomes
    from robench.outdir import OutputFolder

    rng = np.random.default_rng(0)
    ids = rng.permutation(10_000)[:5000].tolist()
    with OutputFolder.open(tmp_path / "run") as folder:
        table = OutcomeTable(folder)
        for cell in range(40):
            clean = rng.random(5000) < 0.98
            table.replace_cells(f"d{cell % 8}", f"a{cell // 8}", 0, ids,
                                [_outcome(0.1, clean.tolist(),
                                          (clean & (rng.random(5000) < 0.5)).tolist())])
        frame = read_outcomes(folder.path)
    default = io.BytesIO()
    frame.to_parquet(default, index=False, compression="zstd")  # pyarrow's default pages
    ours = _image_column_bytes(tmp_path / "run" / "outcomes.parquet")
    theirs = _image_column_bytes(io.BytesIO(default.getvalue()))
    assert ours < theirs / 3, (ours, theirs)  # 4x here, 7x on the flagship
    assert len(frame) == 40 * 5000 and (frame["image"].to_numpy()[:5000] == ids).all()
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(default.getvalue())), frame)


@pytest.mark.parametrize("bad_eps", [float("nan"), float("inf"), 1e-12])
def test_outcome_rows_at_an_impossible_eps_are_ignored_and_the_rest_kept(tmp_path, bad_eps):
    from robench.outcomes import OutcomeTable
    from robench.outdir import OutputFolder

    with OutputFolder.open(tmp_path / "run") as folder:
        table, frame = _stored_cell(folder)
        odd = frame.assign(eps=bad_eps)
        pd.concat([frame, odd]).to_parquet(table.path, index=False)
        again = OutcomeTable(folder)
        assert again.load_existing() and len(again) == 2
        assert again.counts("none", "fgsm", 0.1, 0, [3, 4]) == (2, 1, 1)


def test_rows_of_one_cell_under_two_spellings_of_its_eps_make_it_unverifiable(tmp_path):
    from robench.outcomes import OutcomeTable
    from robench.outdir import OutputFolder

    with OutputFolder.open(tmp_path / "run") as folder:
        table, frame = _stored_cell(folder)
        pd.concat([frame, frame.assign(eps=0.1 + 1e-12)]).to_parquet(table.path, index=False)
        again = OutcomeTable(folder)
        assert again.load_existing() and len(again) == 4  # nothing silently dropped
        assert again.counts("none", "fgsm", 0.1, 0, [3, 4]) is None  # redone, not trusted


@pytest.mark.parametrize("column", ["clean_correct", "adv_correct"])
@pytest.mark.parametrize("values", [["False", "False"], [0, 2], [0.0, 0.5]])
def test_correctness_that_is_not_booleans_makes_the_outcomes_untrusted(tmp_path, column,
                                                                       values):
    """A cast would read the string "False" (or 2, or 0.5) as True: such a file is not trusted
    on resume, and reading it for a report is refused with the column named."""
    from robench.errors import UserError
    from robench.outcomes import OutcomeTable, read_outcomes
    from robench.outdir import OutputFolder

    with OutputFolder.open(tmp_path / "run") as folder:
        table, frame = _stored_cell(folder, [False, False], [False, False])
        # written through the folder: recorded in its manifest, so only the content is wrong
        buffer = io.BytesIO()
        frame.assign(**{column: values}).to_parquet(buffer, index=False)
        folder.write_bytes(table.path.name, buffer.getvalue())
        assert not OutcomeTable(folder).load_existing()
        with pytest.raises(UserError, match=f"column '{column}' holds values that are not "
                                            "booleans"):
            read_outcomes(folder.path)


def _mixed_outcomes():
    """Two seeds, a cell split into two runs, one eps under two spellings, a NaN-eps row."""
    import numpy as np

    def block(defense, attack, eps, seed, images, adv):
        return pd.DataFrame({"defense": defense, "attack": attack, "eps": eps, "seed": seed,
                             "image": np.asarray(images, "int32"), "clean_correct": True,
                             "adv_correct": np.asarray(adv, bool)})
    return pd.concat([
        block("none", "fgsm", 0.1, 0, [5, 6], [True, False]),
        block("none", "pgd", 0.1, 0, [5, 6], [False, False]),
        block("none", "fgsm", 0.1, 0, [7], [True]),                 # the fgsm cell, again
        block("none", "fgsm", 0.1, 1, [5, 6, 7], [False, True, True]),
        block("at", "fgsm", 0.3, 0, [1], [True]),
        block("at", "fgsm", 0.30000000000001, 0, [2], [False]),     # the same eps, respelled
        block("at", "fgsm", float("nan"), 0, [3], [True]),          # no cell
    ], ignore_index=True)


def _naive_robust(frame):
    """The same index from a per-row loop: the reference for RobustPerImage."""
    import math

    from robench.eps import canonical_eps
    cells = {}
    for row in frame.itertuples(index=False):
        if (not math.isfinite(row.eps) or pd.isna(row.defense) or pd.isna(row.attack)
                or row.seed != int(row.seed)):
            continue
        key = (str(row.defense), str(row.attack), canonical_eps(row.eps), int(row.seed))
        cells.setdefault(key, []).append((row.image, row.clean_correct and row.adv_correct))
    return {k: v for k, v in cells.items() if len({i for i, _ in v}) == len(v)}


@pytest.mark.parametrize("categorical", [False, True])
def test_robust_per_image_indexes_every_cell_in_row_order(categorical):
    from robench.outcomes import RobustPerImage

    frame = _mixed_outcomes()
    if categorical:
        frame = frame.astype({"defense": "category", "attack": "category"})
    index = RobustPerImage(frame)
    expected = _naive_robust(frame)
    assert set(index.cells) == set(expected) and len(index.cells) == 4
    for key, pairs in expected.items():
        series = index.cells[key]
        assert list(zip(series.index, series, strict=True)) == pairs, key
    assert index.get("none", "fgsm", 0.1, 0).index.tolist() == [5, 6, 7]
    assert index.get("at", "fgsm", 0.3, 0).tolist() == [True, False]
    assert index.get("none", "fgsm", 0.2, 0) is None
    assert RobustPerImage.of(index) is index and RobustPerImage.of(None) is None


def test_reading_robust_per_image_by_row_group_equals_indexing_the_whole_table(tmp_path,
                                                                             monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robench import outcomes
    from robench.errors import UserError
    from robench.outcomes import OUTCOMES_FILE, RobustPerImage, read_robust_per_image

    assert read_robust_per_image(tmp_path) is None
    frame = _mixed_outcomes()
    # row groups of 2 rows read 3 rows at a time: cells cut across reads, as no robench run
    # writes them
    monkeypatch.setattr(outcomes, "READ_ROWS", 3)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                   tmp_path / OUTCOMES_FILE, row_group_size=2)
    assert pq.ParquetFile(tmp_path / OUTCOMES_FILE).num_row_groups > 3
    by_group, whole = read_robust_per_image(tmp_path).cells, RobustPerImage(frame).cells
    assert list(by_group) == list(whole)
    for key, series in whole.items():
        pd.testing.assert_series_equal(by_group[key], series, check_index_type=False)
    frame.assign(adv_correct="True").to_parquet(tmp_path / OUTCOMES_FILE, index=False)
    with pytest.raises(UserError, match="column 'adv_correct' holds values that are not"):
        read_robust_per_image(tmp_path)
    (tmp_path / OUTCOMES_FILE).write_bytes(b"PAR1 not parquet")
    with pytest.raises(UserError, match="not a readable outcomes table"):
        read_robust_per_image(tmp_path)


def test_reading_cell_outcomes_by_row_group_equals_a_loop_over_the_rows(tmp_path, monkeypatch):
    """verify's per-cell outcomes, read a few rows at a time, are each cell's rows in file
    order (a cell cut across reads or stored twice is one cell; no row is in two cells)."""
    import math

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robench import outcomes
    from robench.eps import canonical_eps
    from robench.outcomes import OUTCOMES_FILE, read_cell_outcomes

    assert read_cell_outcomes(tmp_path) is None
    frame = _mixed_outcomes()
    frame["clean_correct"] = np.arange(len(frame)) % 3 != 1
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)  # an image twice: kept
    expected: dict = {}
    for row in frame.itertuples(index=False):
        if math.isfinite(row.eps):
            key = (row.defense, row.attack, canonical_eps(row.eps), int(row.seed))
            expected.setdefault(key, []).append((row.image, row.clean_correct, row.adv_correct))
    monkeypatch.setattr(outcomes, "READ_ROWS", 3)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False),
                   tmp_path / OUTCOMES_FILE, row_group_size=2)
    cells = read_cell_outcomes(tmp_path)
    assert set(cells) == set(expected) and len(cells) == 4
    for key, rows in expected.items():
        got = cells[key]
        assert got.image.dtype == np.int32 and len(got) == len(rows)
        assert list(zip(got.image.tolist(), got.clean_correct.tolist(),
                        got.adv_correct.tolist(), strict=True)) == rows, key
    assert cells[("none", "fgsm", 0.1, 0)].image.tolist() == [5, 6, 7, 5]


def test_a_table_saved_by_pandas_with_its_index_reads_as_without(tmp_path):
    """``pd.read_parquet``, filter, ``to_parquet``: pandas stores the index as a column, which
    ``read_parquet`` hides; the row-group reader hides it too."""
    from robench.outcomes import OUTCOMES_FILE, RobustPerImage, read_robust_per_image

    frame = _mixed_outcomes()
    kept = frame[frame["seed"] == 0]  # a filter leaves an index that is not a range
    kept.to_parquet(tmp_path / OUTCOMES_FILE)
    assert "__index_level_0__" in pq_names(tmp_path / OUTCOMES_FILE)
    by_group, whole = read_robust_per_image(tmp_path).cells, RobustPerImage(kept).cells
    assert list(by_group) == list(whole) and len(whole) == 3


def pq_names(path):
    import pyarrow.parquet as pq
    return pq.ParquetFile(path).schema_arrow.names


@pytest.mark.parametrize("dtype", ["string", "object"])
def test_rows_with_a_missing_label_are_in_no_cell(dtype):
    from robench.outcomes import RobustPerImage

    frame = _mixed_outcomes().astype({"defense": dtype, "attack": dtype})
    frame.loc[:1, "defense"] = pd.NA  # the first fgsm run of "none"
    frame.loc[2, "attack"] = None
    cells = RobustPerImage(frame).cells
    assert cells[("none", "fgsm", 0.1, 0)].index.tolist() == [7]
    assert cells[("none", "pgd", 0.1, 0)].index.tolist() == [6]
    assert not any("<NA>" in key or "None" in key or "nan" in key for key in cells)


@pytest.mark.parametrize("max_runs", [100_000, 1])  # runs of consecutive rows; a group-by
def test_shuffled_duplicated_and_fractional_rows_are_indexed_like_a_per_row_loop(monkeypatch,
                                                                                 max_runs):
    import numpy as np

    from robench import outcomes
    from robench.outcomes import RobustPerImage

    monkeypatch.setattr(outcomes, "MAX_RUNS", max_runs)
    frame = _mixed_outcomes()
    extra = frame.iloc[[0]].assign(seed=0.5)           # a fractional seed: no cell
    twice = frame.iloc[[3]]                            # none/pgd image 6 again: cell untrusted
    frame = pd.concat([frame.astype({"seed": float}), extra, twice], ignore_index=True)
    shuffled = frame.iloc[np.random.default_rng(0).permutation(len(frame))]
    for table in (frame, shuffled):
        index = RobustPerImage(table)
        expected = _naive_robust(table)
        assert set(index.cells) == set(expected) and ("none", "pgd", 0.1, 0) not in expected
        for key, pairs in expected.items():
            assert list(zip(index.cells[key].index, index.cells[key], strict=True)) == pairs


def test_an_outcomes_frame_given_to_the_api_must_hold_booleans():
    from robench.leaderboard import build_leaderboard

    results, frame = _one_cell_results(), _mixed_outcomes()
    text = frame.assign(adv_correct=frame["adv_correct"].map({True: "True", False: "False"}))
    with pytest.raises(ValueError, match="'adv_correct' holds values that are not booleans"):
        build_leaderboard(results, outcomes=text)


def _one_cell_results():
    from robench.results import RESULT_COLUMNS
    row = dict.fromkeys(RESULT_COLUMNS, "")
    row.update(defense="none", defense_name="none", attack="fgsm", attack_name="fgsm",
               attack_params="{}", eps=0.1, seed=0, n=3, clean_acc=1.0, robust_acc=2 / 3,
               role="eval", backend="native")
    return pd.DataFrame([row])


@pytest.mark.parametrize("ids", [[2**32 + 3, 2**32 + 4], [3.0, 4.0], [-1, 4]])
def test_image_ids_an_int32_column_cannot_hold_make_the_outcomes_untrusted(tmp_path, ids):
    """2**32 + 3 would wrap to the planned id 3 and the cell be reused."""
    import numpy as np

    from robench.outcomes import OutcomeTable
    from robench.outdir import OutputFolder

    with OutputFolder.open(tmp_path / "run") as folder:
        table, frame = _stored_cell(folder)
        frame.assign(image=np.asarray(ids)).to_parquet(table.path, index=False)
        assert not OutcomeTable(folder).load_existing()
        frame.to_parquet(table.path, index=False)  # the ids as written: trusted
        again = OutcomeTable(folder)
        assert again.load_existing() and again.counts("none", "fgsm", 0.1, 0, [3, 4]) == (2, 1, 1)


def test_a_dangling_link_named_outcomes_is_damage_not_absence(tmp_path):
    from robench.errors import UserError
    from robench.outcomes import (
        OUTCOMES_FILE,
        read_cell_outcomes,
        read_outcomes,
        read_robust_per_image,
    )

    (tmp_path / OUTCOMES_FILE).symlink_to(tmp_path / "gone.parquet")
    for read in (read_outcomes, read_robust_per_image, read_cell_outcomes):
        with pytest.raises(UserError, match="is a symbolic link; robench reads only regular files"):
            read(tmp_path)


@pytest.mark.parametrize(("ids", "unique"), [([], True), ([4], True), ([1, 2, 9], True),
                                             ([9, 1, 2], True), ([1, 1], False),
                                             ([9, 1, 9], False), ([1, 2, 2], False)])
def test_an_image_twice_is_found_in_any_order(ids, unique):
    import numpy as np

    from robench.outcomes import _unique

    assert _unique(np.asarray(ids, dtype=np.int32)) is unique


def test_cell_outcomes_refuse_image_ids_an_int32_cast_would_wrap(tmp_path):
    """verify reads ids as int32: 2**32 + 3 must not become the planned id 3."""
    import numpy as np

    from robench.errors import UserError
    from robench.outcomes import OUTCOMES_FILE, read_cell_outcomes

    frame = pd.DataFrame({"defense": "none", "attack": "fgsm", "eps": 0.1, "seed": 0,
                          "image": np.asarray([2**32 + 3, 2**32 + 4], dtype=np.int64),
                          "clean_correct": True, "adv_correct": False})
    frame.to_parquet(tmp_path / OUTCOMES_FILE, index=False)
    with pytest.raises(UserError, match="image ids that are not whole numbers an int32"):
        read_cell_outcomes(tmp_path)
    frame.assign(image=np.asarray([3, 4], dtype=np.int64)).to_parquet(tmp_path / OUTCOMES_FILE,
                                                                     index=False)
    assert read_cell_outcomes(tmp_path)[("none", "fgsm", 0.1, 0)].image.tolist() == [3, 4]


def test_two_missing_image_ids_in_a_cell_are_an_image_twice():
    import numpy as np

    from robench.outcomes import _unique

    assert not _unique(np.asarray([1.0, np.nan, np.nan]))
    assert _unique(np.asarray([1.0, np.nan]))
