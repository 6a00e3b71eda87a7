"""The report's figures, written as PNG and SVG and returned for inlining in report.html.

- ``worst_case``: the worst case per defense with its interval (points and bars at one eps,
  lines over several);
- ``curve_<attack>``: accuracy vs eps per attack with an eps sweep (legend outside the axes,
  95 % interval bands);
- ``curves_by_defense``: one small panel per defense when there are more than
  ``SMALL_MULTIPLES_ABOVE`` defenses (or the one defense's panel, every attack in it).

Figures are rendered in memory with matplotlib's object API (no pyplot state) and written through
the ``OutputFolder``; the SVG hash salt and the PNG/SVG metadata are fixed so that the same data
gives the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd

from robench.leaderboard import CHECK_ROLE
from robench.outdir import OutputFolder
from robench.report.columns import BoardColumns
from robench.report.layout import worst_interval_from_results
from robench.report.text import DASH, as_float, n_note, rank_text
from robench.run_files import is_figure_name

SMALL_MULTIPLES_ABOVE = 8   # more defenses than this: one small panel per defense as well


@dataclass
class Figure:
    """One figure of the report: its file stem, caption, PNG bytes and whether it takes the
    page's full width in report.html."""
    name: str       # file stem
    caption: str
    png: bytes
    wide: bool = False


_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31",
           "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363")


def _style(i: int) -> dict[str, Any]:
    return {"color": _COLORS[i % len(_COLORS)], "marker": "os^Dv<>p"[i % 8],
            "linestyle": ("-", "--", ":", "-.")[(i // len(_COLORS)) % 4], "ms": 3.5, "lw": 1.4}


def _curve(rows: pd.DataFrame) -> pd.DataFrame:
    """One point per eps (the mean over seeds), with the interval columns when present: with
    several seeds the band is the envelope of the per-seed Wilson intervals."""
    cols = [c for c in ("robust_acc", "robust_acc_lo", "robust_acc_hi") if c in rows]
    how = {"robust_acc": "mean", "robust_acc_lo": "min", "robust_acc_hi": "max"}
    return rows.groupby("eps", sort=True)[cols].agg({c: how[c] for c in cols}).reset_index()


def _save(fig: Any, out: OutputFolder, name: str, written: list[str]) -> bytes:
    import matplotlib

    pngs = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "robench", "svg.fonttype": "none"}):
        fig.savefig(pngs, format="png", bbox_inches="tight", metadata={"Software": None})
        svg = io.BytesIO()
        fig.savefig(svg, format="svg", bbox_inches="tight", metadata={"Date": None})
    out.write_bytes(f"{name}.png", pngs.getvalue())
    out.write_bytes(f"{name}.svg", svg.getvalue())
    written += [f"{name}.png", f"{name}.svg"]
    return pngs.getvalue()


def _tex(label: Any) -> str:
    """A label for matplotlib: ``$`` escaped, so a label is never read as mathtext."""
    return str(label).replace("$", r"\$")


def _legend_outside(ax: Any, entries: int) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              frameon=False, ncol=1 if entries <= 22 else 2)


def plot_curves(results: pd.DataFrame, out: OutputFolder, board: pd.DataFrame | None = None
                ) -> list[Figure]:
    """The report's figures, each written as PNG and SVG: the worst case per defense (from the
    leaderboard), accuracy vs eps per attack with eps sweeps, and one panel per defense when
    there are more than ``SMALL_MULTIPLES_ABOVE``. Earlier figure files that are no longer
    produced (robench's own only) are removed."""
    from matplotlib.figure import Figure as MplFigure

    figures: list[Figure] = []
    written: list[str] = []
    defenses = list(dict.fromkeys(board["defense"] if board is not None else results["defense"]))
    order = {d: i for i, d in enumerate(defenses)}
    if board is not None:
        figure = _worst_case_figure(board, results, out, written)
        if figure is not None:
            figures.append(figure)

    sweeps = [a for a, rows in results.groupby("attack", sort=False) if rows["eps"].nunique() > 1]
    # one defense: its panel (every attack in one figure) says all the per-attack figures would
    for attack in sweeps if len(defenses) > 1 else []:
        rows = results[results["attack"] == attack]
        fig = MplFigure(figsize=(6.4, 3.6), dpi=100)
        ax = fig.subplots()
        present = sorted(rows["defense"].unique(), key=lambda d: order.get(d, len(order)))
        for defense in present:
            curve = _curve(rows[rows["defense"] == defense])
            style = _style(order.get(defense, 0))
            ax.plot(curve["eps"], 100 * curve["robust_acc"], label=_tex(defense), **style)
            if "robust_acc_lo" in curve:
                ax.fill_between(curve["eps"], 100 * curve["robust_acc_lo"],
                                100 * curve["robust_acc_hi"], color=style["color"], alpha=0.15,
                                lw=0)
        ax.set_xlabel("eps (L∞, input scale [0, 1])")
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_title(f"{_tex(attack)} ({n_note(results, attack)})", fontsize=10)
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        _legend_outside(ax, len(present))
        png = _save(fig, out, f"curve_{_safe(str(attack))}", written)
        figures.append(Figure(f"curve_{_safe(str(attack))}",
                              f"{attack}: accuracy vs eps; bands: 95 % Wilson intervals", png))

    if sweeps and (len(defenses) > SMALL_MULTIPLES_ABOVE or len(defenses) == 1):
        figures.append(_small_multiples(results, sweeps, defenses, board, out, written))

    keep = set(written)
    for path in sorted(out.path.iterdir()):
        name = path.name
        if is_figure_name(name) and name not in keep and out.owns(name):
            out.remove(name)
    return figures


def _worst_case_figure(board: pd.DataFrame, results: pd.DataFrame, out: OutputFolder,
                       written: list[str]) -> Figure | None:
    from matplotlib.figure import Figure as MplFigure

    worst = BoardColumns.of(board).worst
    if not worst.eps:
        return None
    status = board["status"] if "status" in board else pd.Series([""] * len(board))
    ranks = board["rank"] if "rank" in board else pd.Series([pd.NA] * len(board))
    labels = [_tex(d) + ("  (unranked)" if rank_text(r) == DASH else "")
              for d, r in zip(board["defense"], ranks, strict=True)]
    if len(worst.eps) == 1:
        eps, _ = worst.eps[0]
        values, los, his = [], [], []
        for _, row in board.iterrows():
            v = as_float(row.get(worst.column[eps]))
            if eps in worst.lo:
                lo, hi = as_float(row.get(worst.lo[eps])), as_float(row.get(worst.hi[eps]))
            else:
                lo, hi, _ = worst_interval_from_results(results, str(row["defense"]),
                                                         float(eps), v)
            values.append(v)
            los.append(lo)
            his.append(hi)
        n = len(board)
        fig = MplFigure(figsize=(8.0, 0.9 + 0.28 * n), dpi=100)
        ax = fig.subplots()
        y = list(range(n))[::-1]
        ax.scatter(100 * board["clean_acc"].astype(float), y, marker="|", s=120,
                   color="#555", label="clean accuracy", zorder=2)
        for yi, v, lo, hi, st in zip(y, values, los, his, status, strict=True):
            if v is None:
                continue
            color = {"fail": "#cf222e", "warn": "#9a6700"}.get(str(st), "#1f77b4")
            # an interval has both ends or neither
            err = (None if lo is None
                   else [[100 * max(v - lo, 0)], [100 * max(cast(float, hi) - v, 0)]])
            ax.errorbar([100 * v], [yi], xerr=err, fmt="o", color=color, ms=5, capsize=3,
                        zorder=3, mfc=color if st != "fail" else "white")
        present = set(map(str, status))
        for st, color, text in (("pass", "#1f77b4", "worst case, checks passed"),
                                ("warn", "#9a6700", "worst case, a check warned"),
                                ("fail", "#cf222e", "worst case, a check failed: unranked")):
            if st in present or (st == "pass" and not present & {"warn", "fail"}):
                ax.errorbar([], [], xerr=[], fmt="o", color=color, capsize=3,
                            mfc=color if st != "fail" else "white", label=text)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlim(-2, 102)
        ax.set_ylim(-0.7, n - 0.3)
        ax.set_xlabel(f"accuracy (%) at eps {eps}")
        ax.set_title(f"worst case over attacks at eps {eps}, per defense", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        _legend_outside(ax, 4)
        png = _save(fig, out, "worst_case", written)
        return Figure("worst_case", f"worst case at eps {eps} (points) with 95 % intervals "
                                    "(bars); ticks: clean accuracy", png, wide=True)
    fig = MplFigure(figsize=(6.8, 3.8), dpi=100)
    ax = fig.subplots()
    xs = [e for _, e in worst.eps]
    for i, (_, row) in enumerate(board.iterrows()):
        style = _style(i)
        ys = [as_float(row.get(worst.column[t])) for t, _ in worst.eps]
        ax.plot(xs, [math.nan if v is None else 100 * v for v in ys],
                label=labels[i], **style)
        if all(t in worst.lo for t, _ in worst.eps):
            lows = [as_float(row.get(worst.lo[t])) for t, _ in worst.eps]
            highs = [as_float(row.get(worst.hi[t])) for t, _ in worst.eps]
            ax.fill_between(xs, [math.nan if v is None else 100 * v for v in lows],
                            [math.nan if v is None else 100 * v for v in highs],
                            color=style["color"], alpha=0.15, lw=0)
    ax.set_xlabel("eps (L∞, input scale [0, 1])")
    ax.set_ylabel("worst-case accuracy (%)")
    ax.set_title("worst case over attacks vs eps", fontsize=10)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    _legend_outside(ax, len(board))
    png = _save(fig, out, "worst_case", written)
    return Figure("worst_case", "worst case over attacks vs eps; bands: 95 % intervals", png)


def _small_multiples(results: pd.DataFrame, sweeps: list[str], defenses: list[str],
                     board: pd.DataFrame | None, out: OutputFolder, written: list[str]
                     ) -> Figure:
    from matplotlib.figure import Figure as MplFigure

    single = len(defenses) == 1
    # attacks at one eps (not sanity checks): points, so each panel shows every attack
    regular = results if "role" not in results else results[
        results["role"].fillna("") != CHECK_ROLE]
    points = [a for a in dict.fromkeys(regular["attack"]) if a not in sweeps]
    ncols = min(5, math.ceil(math.sqrt(len(defenses))))
    nrows = math.ceil(len(defenses) / ncols)
    fig = MplFigure(figsize=(6.4, 3.6) if single else (2.6 * ncols, 2.1 * nrows + 0.6), dpi=100)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False).ravel()
    status = {} if board is None or "status" not in board else dict(
        zip(board["defense"], board["status"], strict=True))
    reference = "none" if "none" in defenses and not single else None
    for ax, defense in zip(axes, defenses, strict=False):
        for i, attack in enumerate(sweeps):
            style = _style(i)
            if reference and defense != reference:
                ref = results[(results["defense"] == reference) & (results["attack"] == attack)]
                if not ref.empty:
                    c = _curve(ref)
                    ax.plot(c["eps"], 100 * c["robust_acc"], color=style["color"], lw=0.8,
                            alpha=0.35, linestyle=":")
            rows = results[(results["defense"] == defense) & (results["attack"] == attack)]
            if rows.empty:
                continue
            c = _curve(rows)
            if single and len(sweeps) > 1:  # earlier lines wider: agreeing attacks that
                # coincide (e.g. one attack in several backends) stay visible under later ones
                style = {**style, "lw": 1.2 + min(1.4, 7.0 / len(sweeps)) * (len(sweeps) - 1 - i),
                         "alpha": 0.9}
            ax.plot(c["eps"], 100 * c["robust_acc"], label=_tex(attack), **style)
            if "robust_acc_lo" in c:
                ax.fill_between(c["eps"], 100 * c["robust_acc_lo"], 100 * c["robust_acc_hi"],
                                color=style["color"], alpha=0.15, lw=0)
        for j, attack in enumerate(points, start=len(sweeps)):
            rows = results[(results["defense"] == defense) & (results["attack"] == attack)]
            if rows.empty:
                continue
            c = _curve(rows)
            style = _style(j)
            err = None
            if "robust_acc_lo" in c:
                err = [100 * (c["robust_acc"] - c["robust_acc_lo"]).clip(lower=0),
                       100 * (c["robust_acc_hi"] - c["robust_acc"]).clip(lower=0)]
            ax.errorbar(c["eps"], 100 * c["robust_acc"], yerr=err, fmt=style["marker"],
                        color=style["color"], ms=4, capsize=2, label=_tex(attack))
        st = status.get(defense)
        tag = f" [{str(st).upper()}]" if isinstance(st, str) and st != "pass" else ""
        ax.set_title(f"{_tex(defense)}{tag}", fontsize=8,
                     color={"fail": "#cf222e", "warn": "#9a6700"}.get(str(st), "black"))
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=9 if single else 7)
    for i, ax in enumerate(axes):
        ax.set_visible(i < len(defenses))
        if i + ncols >= len(defenses):  # nothing drawn below: this panel shows its eps axis
            ax.xaxis.set_tick_params(labelbottom=True)
    legend: dict[str, Any] = {}
    for ax in axes[:len(defenses)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    if reference:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="grey", linestyle=":", alpha=0.6))
        labels.append(f"{_tex(reference)} (reference)")
    if single:
        ax = axes[0]
        ax.set_title(f"{_tex(defenses[0])}: accuracy vs eps, every attack", fontsize=10)
        ax.set_xlabel("eps (L∞, input scale [0, 1])")
        ax.set_ylabel("accuracy under attack (%)")
        _legend_outside(ax, len(labels))
        png = _save(fig, out, "curves_by_defense", written)
        return Figure("curves_by_defense", f"{defenses[0]}: accuracy vs eps under every attack "
                      "with an eps sweep; bands: 95 % Wilson intervals", png)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.supxlabel("eps (L∞, input scale [0, 1])", fontsize=8)
    fig.supylabel("accuracy under attack (%)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    png = _save(fig, out, "curves_by_defense", written)
    what = f"dotted: {reference}, for reference; " if reference else ""
    return Figure("curves_by_defense", f"accuracy vs eps, one panel per defense ({what}"
                  "bands: 95 % Wilson intervals)", png, wide=True)


def _safe(name: str) -> str:
    """A file-name form of a label: readable, and distinct for distinct labels (a short hash
    is added whenever characters had to be replaced)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"
