"""Pictures and the report: accuracy-vs-eps curves (PNG + SVG) and report.md / report.html."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from pathlib import Path

import pandas as pd

from robench.errors import UserError
from robench.leaderboard import escape_markdown, subset_notes, to_markdown
from robench.outdir import OutputFolder


def plot_curves(results: pd.DataFrame, out: OutputFolder) -> list[Path]:
    """One figure per attack: robust accuracy vs eps, one line per defense. Curve files of
    attacks no longer in the results (robench's own files only) are removed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for attack, rows in results.groupby("attack", sort=False):
        if rows["eps"].nunique() < 2:
            continue
        fig, ax = plt.subplots(figsize=(7.2, 4.6), dpi=110)
        colors = plt.get_cmap("tab20").colors  # 20 distinct colours; styles vary too
        for i, (defense, curve) in enumerate(rows.groupby("defense", sort=False)):
            curve = curve.sort_values("eps")
            ax.plot(curve["eps"], 100 * curve["robust_acc"], marker="os^D"[i % 4], ms=3,
                    linestyle=("-", "--", ":")[(i // 4) % 3] if i >= 10 else "-",
                    color=colors[(2 * i) % 20 if i < 10 else (2 * i + 1) % 20], label=defense)
        ax.set_xlabel("eps (L-inf, input scale [0, 1])")
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_title(f"{attack}: accuracy vs eps (n = {int(rows['n'].max())})")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if rows["defense"].nunique() > 6 else 1)
        fig.tight_layout()
        for ext in ("png", "svg"):
            name = f"curve_{_safe(str(attack))}.{ext}"
            with out.temp_file(name) as tmp:
                fig.savefig(tmp, format=ext)
            written.append(out.path / name)
        plt.close(fig)
    keep = {p.name for p in written}
    for path in sorted(out.path.glob("curve_*")):
        if path.name not in keep and path.suffix in (".png", ".svg") and out.owns(path.name):
            out.remove(path.name)
    return written


def _safe(name: str) -> str:
    """A file-name form of a label: readable, and distinct for distinct labels (a short hash
    is added whenever characters had to be replaced)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
    if safe == name:
        return safe
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:6]}"


def _read_optional(path: Path) -> pd.DataFrame | None:
    if not path.exists() or not path.stat().st_size:
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"not a readable CSV ({type(err).__name__})", where=str(path)) from None


def _read_run_record(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"not a robench run record ({type(err).__name__})",
                        where=str(path)) from None
    if not isinstance(record, dict):
        raise UserError("not a robench run record (not a JSON object)", where=str(path))
    return record


def write_report(out: OutputFolder, results: pd.DataFrame, checks: pd.DataFrame,
                 board: pd.DataFrame, source: Path) -> tuple[Path, Path]:
    """report.md and a self-contained report.html (images inlined) in the folder ``out``, from
    the finalized tables (see ``robench.finalize``) and the run's files in ``source``."""
    metrics = _read_optional(source / "defense_metrics.csv")
    run = _read_run_record(source / "run.json")
    pngs = [p for p in plot_curves(results, out) if p.suffix == ".png"]
    title = str(results["suite"].iloc[0])

    md = [f"# robench report: {escape_markdown(title)}", "", "## Leaderboard", "",
          to_markdown(board, notes=subset_notes(results)), "## Curves", ""]
    md += [f"![{p.stem}]({p.name})" for p in pngs]
    bad = checks[checks["status"] != "pass"]
    md += ["", "## Checks", "", f"{len(checks)} checks, {len(bad)} warned or failed.", ""]
    if not bad.empty:
        md.append(_escaped(bad).to_markdown(index=False))
    if metrics is not None:
        last = metrics.sort_values("step").groupby(["defense", "metric"], sort=False).tail(1)
        md += ["", "## Defense metrics (last step of each)", "",
               _escaped(last).to_markdown(index=False)]
    provenance = {k: run.get(k) for k in ("versions", "git_revision", "git_dirty", "device")}
    md += ["", "## Versions", "", "```json", json.dumps(provenance, indent=2), "```", ""]
    out.write_text("report.md", "\n".join(md))

    def table(frame: pd.DataFrame) -> str:
        return frame.to_html(index=False, border=0, classes="t", na_rep="")

    shown = board.copy()
    for column in shown.columns:
        if pd.api.types.is_numeric_dtype(shown[column]) and column != "rank":
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}")
    images = "".join(
        f'<img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}">' for p in pngs)
    sections = [f"<h1>robench report: {html.escape(title)}</h1>", "<h2>Leaderboard</h2>",
                "<p>Accuracy in %.</p>", table(shown),
                "".join(f"<p>{html.escape(n)}</p>" for n in subset_notes(results)),
                "<h2>Curves</h2>", images, "<h2>Checks</h2>", table(checks)]
    if metrics is not None:
        sections += ["<h2>Defense metrics</h2>", table(metrics)]
    sections += ["<h2>Versions</h2>",
                 f"<pre>{html.escape(json.dumps(provenance, indent=2))}</pre>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
             "table.t{border-collapse:collapse;font-size:13px}"
             "table.t td,table.t th{padding:2px 8px;border-bottom:1px solid #ddd}"
             "img{max-width:48%;margin:4px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n")
    out.write_text("report.html", page)
    return out.path / "report.md", out.path / "report.html"


def _escaped(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells escaped for a markdown table."""
    return frame.assign(**{c: frame[c].map(escape_markdown) for c in frame.columns
                           if frame[c].dtype == object})
